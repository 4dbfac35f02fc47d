//! Turning controller replies into the API's JSON bodies: the reply's payload without the
//! `{"kind":..,"value":..}` envelope (the HTTP route already says what it is).

use control::{ControlError, Reply};

pub fn reply_value(r: &Reply) -> Result<serde_json::Value, ControlError> {
    let v = serde_json::to_value(r)
        .map_err(|e| ControlError::internal(format!("cannot encode reply: {e}")))?;
    Ok(match v {
        serde_json::Value::Object(mut m) => {
            m.remove("value").unwrap_or_else(|| serde_json::json!({}))
        }
        other => other,
    })
}
