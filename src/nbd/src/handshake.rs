//! The fixed newstyle handshake and option haggling, up to the start of transmission.
//!
//! Owns nothing but the byte stream for the duration of the handshake. Every malformed input is
//! answered with an option error or by closing the connection; option payloads are bounded, as is
//! the number of options one connection may send.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::proto::*;
use crate::server::Registry;
use crate::{NbdError, NbdExport, MAX_REQUEST_BYTES};

/// Option payloads larger than this close the connection (names are at most 4 KiB).
const MAX_OPTION_BYTES: u32 = 16 << 10;
/// A connection that haggles longer than this is closed.
const MAX_OPTIONS: usize = 64;
/// What we tell clients about alignment: any is fine, 4 KiB is best.
const PREFERRED_BLOCK_BYTES: u32 = 4096;

pub(crate) struct Chosen {
    pub(crate) export: Arc<dyn NbdExport>,
    pub(crate) removed: watch::Receiver<bool>,
}

/// The transmission flags for an export.
pub(crate) fn transmission_flags(export: &dyn NbdExport) -> u16 {
    // Every export's flush covers writes from all connections, so several may share it.
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
    if export.read_only() {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    }
    f
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    s.write_all(&option_reply(option, kind, data)).await?;
    Ok(())
}

fn protocol(msg: impl Into<String>) -> NbdError {
    NbdError::Protocol(msg.into())
}

/// Run the handshake. `Ok(None)`: the client aborted or left politely.
pub(crate) async fn negotiate<S>(s: &mut S, registry: &Registry) -> Result<Option<Chosen>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&server_greeting()).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    for _ in 0..MAX_OPTIONS {
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr).await?;
        let (magic, option, len) = parse_option_header(&hdr);
        if magic != IHAVEOPT {
            return Err(protocol(format!("bad option magic {magic:#x}")));
        }
        if len > MAX_OPTION_BYTES {
            return Err(protocol(format!("option {option} carries {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                // This option has no error reply: an unknown export closes the connection.
                let name =
                    String::from_utf8(data).map_err(|_| protocol("export name is not UTF-8"))?;
                let Some((export, removed)) = registry.lookup(&name) else {
                    return Err(protocol(format!("unknown export {name:?}")));
                };
                s.write_all(&export.size_bytes().to_be_bytes()).await?;
                s.write_all(&transmission_flags(export.as_ref()).to_be_bytes())
                    .await?;
                if !no_zeroes {
                    s.write_all(&[0u8; 124]).await?;
                }
                s.flush().await?;
                return Ok(Some(Chosen { export, removed }));
            }
            OPT_ABORT => {
                // The client may already be gone; the ack is a courtesy.
                let _ = reply(s, option, REP_ACK, &[]).await;
                let _ = s.flush().await;
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => {
                reply(s, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
            }
            OPT_LIST => {
                for name in registry.names() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    reply(s, option, REP_SERVER, &d).await?;
                }
                reply(s, option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some(req) = parse_info_request(&data) else {
                    reply(
                        s,
                        option,
                        REP_ERR_INVALID,
                        b"malformed NBD_OPT_INFO/GO data",
                    )
                    .await?;
                    s.flush().await?;
                    continue;
                };
                let Some((export, removed)) = registry.lookup(&req.name) else {
                    let msg = format!("no export named {:?}", req.name);
                    reply(s, option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    s.flush().await?;
                    continue;
                };
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&export.size_bytes().to_be_bytes());
                info.extend_from_slice(&transmission_flags(export.as_ref()).to_be_bytes());
                reply(s, option, REP_INFO, &info).await?;
                if req.infos.contains(&INFO_NAME) {
                    let mut d = INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(req.name.as_bytes());
                    reply(s, option, REP_INFO, &d).await?;
                }
                if req.infos.contains(&INFO_BLOCK_SIZE) {
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    d.extend_from_slice(&1u32.to_be_bytes());
                    d.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
                    d.extend_from_slice(&MAX_REQUEST_BYTES.to_be_bytes());
                    reply(s, option, REP_INFO, &d).await?;
                }
                reply(s, option, REP_ACK, &[]).await?;
                s.flush().await?;
                if option == OPT_GO {
                    return Ok(Some(Chosen { export, removed }));
                }
            }
            _ => {
                let msg = format!("option {option} is not supported");
                reply(s, option, REP_ERR_UNSUP, msg.as_bytes()).await?;
            }
        }
        s.flush().await?;
    }
    // Tell the client why before hanging up, if it still listens.
    let _ = reply(s, 0, REP_ERR_TOO_BIG, b"too many options").await;
    Err(protocol("too many options"))
}
