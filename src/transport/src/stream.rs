//! The receiving end of a streamed request body, with credit-based flow control: the receiver
//! grants the sender one more chunk each time the handler takes one, so at most `window` chunks
//! are ever buffered per stream whatever the sender does.
use tokio::sync::mpsc;

use crate::frame::{Frame, FrameKind};
use crate::Error;

/// Chunks of a request body as the handler reads them. `None` from the channel marks the end.
#[derive(Debug)]
pub struct StreamRx {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<Option<Vec<u8>>>,
    pub(crate) out: mpsc::Sender<Frame>,
    pub(crate) done: bool,
}

impl StreamRx {
    /// The next chunk, `Ok(None)` at the end of the body, or an error if the connection broke
    /// before the sender finished.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if self.done {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Some(chunk)) => {
                let credit = Frame::new(FrameKind::Credit, self.id, 1u32.to_le_bytes().to_vec());
                // If the connection is gone the sender cannot use the credit anyway.
                let _ = self.out.send(credit).await;
                Ok(Some(chunk))
            }
            Some(None) => {
                self.done = true;
                Ok(None)
            }
            None => Err(Error::Closed),
        }
    }

    /// Reads the whole body, failing if it exceeds `limit_bytes`.
    pub async fn collect(&mut self, limit_bytes: usize) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            if all.len().saturating_add(chunk.len()) > limit_bytes {
                return Err(Error::Stream(format!("body exceeds {limit_bytes} bytes")));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}
