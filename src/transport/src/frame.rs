//! Wire framing: `u32 len (LE) | u8 kind | u64 request id (LE) | payload`, where `len` counts
//! everything after itself. Frames are bounded by the connection's `max_frame_bytes`; a frame
//! that claims more is rejected before anything is allocated for it.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// Bytes of `len + kind + id`.
pub const FRAME_HEADER_BYTES: usize = 4 + 1 + 8;
const LEN_COVERED_HEADER_BYTES: u32 = 1 + 8;

/// What a frame carries. Values are part of the wire format: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A request whose payload is the whole request.
    Request = 1,
    /// A request followed by `Chunk` frames and one `End` frame with the same id.
    StreamRequest = 2,
    /// Successful response.
    Response = 3,
    /// Handler error; the payload is a UTF-8 message.
    Error = 4,
    /// One chunk of a request body stream.
    Chunk = 5,
    /// End of a request body stream.
    End = 6,
    /// Receiver grants the sender more chunks; payload is a `u32` LE count.
    Credit = 7,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Request,
            2 => FrameKind::StreamRequest,
            3 => FrameKind::Response,
            4 => FrameKind::Error,
            5 => FrameKind::Chunk,
            6 => FrameKind::End,
            7 => FrameKind::Credit,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, id: u64, payload: Vec<u8>) -> Frame {
        Frame { kind, id, payload }
    }

    /// Total size on the wire.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload.len()
    }

    /// Appends the encoded frame to `out`. Fails if the frame exceeds `max_frame_bytes`.
    pub fn encode_into(&self, out: &mut Vec<u8>, max_frame_bytes: u32) -> Result<(), Error> {
        let len = payload_len_field(self.payload.len(), max_frame_bytes)?;
        out.extend_from_slice(&len.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed.
    /// Returns the frame and the number of bytes consumed.
    pub fn decode(buf: &[u8], max_frame_bytes: u32) -> Result<Option<(Frame, usize)>, Error> {
        let Some(len_bytes) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(len_bytes.try_into().map_err(|_| bad("short length"))?);
        check_len(len, max_frame_bytes)?;
        let total = 4usize + len as usize;
        let Some(body) = buf.get(4..total) else {
            return Ok(None);
        };
        let (kind, id) = parse_kind_id(body)?;
        let payload = body.get(9..).unwrap_or(&[]).to_vec();
        Ok(Some((Frame { kind, id, payload }, total)))
    }

    /// Reads one frame from an async stream. `Ok(None)` on a clean EOF between frames.
    pub async fn read_from<R: AsyncRead + Unpin>(
        r: &mut R,
        max_frame_bytes: u32,
    ) -> Result<Option<Frame>, Error> {
        let mut payload = Vec::new();
        Ok(Self::read_into(r, max_frame_bytes, &mut payload)
            .await?
            .map(|(kind, id)| Frame { kind, id, payload }))
    }

    /// Like [`Frame::read_from`], with the payload read into `payload` (cleared first; its
    /// allocation is reused): a reader of many frames allocates once instead of per frame.
    /// Returns the frame's kind and id. On an error `payload` holds no frame.
    pub async fn read_into<R: AsyncRead + Unpin>(
        r: &mut R,
        max_frame_bytes: u32,
        payload: &mut Vec<u8>,
    ) -> Result<Option<(FrameKind, u64)>, Error> {
        payload.clear();
        // The length, kind and id together, so the payload lands where it stays (no shift).
        let mut head = [0u8; FRAME_HEADER_BYTES];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                n => got += n,
            }
            if got >= 4 {
                // Refuse a bad length before waiting for the rest of the header.
                check_len(
                    u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
                    max_frame_bytes,
                )?;
            }
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let (kind, id) = parse_kind_id(&head[4..])?;
        // Bounded by check_len above. Read into the spare capacity: zeroing a payload that the
        // read overwrites at once cost a pass over every request's data.
        let n = (len - LEN_COVERED_HEADER_BYTES) as usize;
        payload.reserve_exact(n);
        while payload.len() < n {
            let want = (n - payload.len()) as u64;
            if (&mut *r).take(want).read_buf(payload).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(Some((kind, id)))
    }

    /// Writes the frame (without flushing).
    pub async fn write_to<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        max_frame_bytes: u32,
    ) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(self.wire_len());
        self.encode_into(&mut buf, max_frame_bytes)?;
        w.write_all(&buf).await?;
        Ok(())
    }
}

fn bad(msg: &str) -> Error {
    Error::BadFrame(msg.to_string())
}

fn payload_len_field(payload_len: usize, max_frame_bytes: u32) -> Result<u32, Error> {
    let limit = max_frame_bytes.min(crate::MAX_FRAME_BYTES_LIMIT);
    let len = u32::try_from(payload_len)
        .ok()
        .and_then(|p| p.checked_add(LEN_COVERED_HEADER_BYTES))
        .filter(|l| *l <= limit)
        .ok_or(Error::FrameTooLarge {
            size_bytes: payload_len as u64 + u64::from(LEN_COVERED_HEADER_BYTES),
            limit_bytes: u64::from(limit),
        })?;
    Ok(len)
}

fn check_len(len: u32, max_frame_bytes: u32) -> Result<(), Error> {
    let limit = max_frame_bytes.min(crate::MAX_FRAME_BYTES_LIMIT);
    if len < LEN_COVERED_HEADER_BYTES {
        return Err(bad("frame shorter than its header"));
    }
    if len > limit {
        return Err(Error::FrameTooLarge {
            size_bytes: u64::from(len),
            limit_bytes: u64::from(limit),
        });
    }
    Ok(())
}

fn parse_kind_id(body: &[u8]) -> Result<(FrameKind, u64), Error> {
    let kind_byte = *body.first().ok_or_else(|| bad("missing kind"))?;
    let kind = FrameKind::from_u8(kind_byte).ok_or_else(|| bad("unknown frame kind"))?;
    let id_bytes: [u8; 8] = body
        .get(1..9)
        .ok_or_else(|| bad("missing request id"))?
        .try_into()
        .map_err(|_| bad("missing request id"))?;
    Ok((kind, u64::from_le_bytes(id_bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let f = Frame::new(FrameKind::Chunk, 42, vec![1, 2, 3]);
        let mut b = Vec::new();
        f.encode_into(&mut b, 1024).unwrap();
        assert_eq!(b.len(), f.wire_len());
        let (g, used) = Frame::decode(&b, 1024).unwrap().unwrap();
        assert_eq!((g, used), (f, b.len()));
        // Partial input asks for more.
        assert!(Frame::decode(&b[..b.len() - 1], 1024).unwrap().is_none());
    }

    #[test]
    fn oversize_rejected_both_ways() {
        let f = Frame::new(FrameKind::Request, 1, vec![0; 100]);
        let mut b = Vec::new();
        assert!(matches!(
            f.encode_into(&mut b, 50),
            Err(Error::FrameTooLarge { .. })
        ));
        f.encode_into(&mut b, 1000).unwrap();
        assert!(matches!(
            Frame::decode(&b, 50),
            Err(Error::FrameTooLarge { .. })
        ));
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            Frame::decode(&huge, 1 << 20),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn bad_kind_and_short_header() {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.push(99);
        b.extend_from_slice(&[0; 8]);
        assert!(matches!(Frame::decode(&b, 100), Err(Error::BadFrame(_))));
        let short = 3u32.to_le_bytes();
        assert!(matches!(
            Frame::decode(&short, 100),
            Err(Error::BadFrame(_))
        ));
    }

    #[tokio::test]
    async fn async_read_matches_decode() {
        let f = Frame::new(FrameKind::Response, 7, b"hello".to_vec());
        let mut b = Vec::new();
        f.encode_into(&mut b, 1024).unwrap();
        f.encode_into(&mut b, 1024).unwrap();
        let mut r = &b[..];
        assert_eq!(
            Frame::read_from(&mut r, 1024).await.unwrap(),
            Some(f.clone())
        );
        assert_eq!(Frame::read_from(&mut r, 1024).await.unwrap(), Some(f));
        assert_eq!(Frame::read_from(&mut r, 1024).await.unwrap(), None);
    }

    #[tokio::test]
    async fn payload_read_in_pieces_and_cut_short() {
        let f = Frame::new(
            FrameKind::Request,
            9,
            (0..=255u8).cycle().take(5000).collect(),
        );
        let mut b = Vec::new();
        f.encode_into(&mut b, 1 << 20).unwrap();
        // One byte per read: the payload is gathered over many reads.
        let mut slow = tokio::io::BufReader::with_capacity(1, &b[..]);
        assert_eq!(
            Frame::read_from(&mut slow, 1 << 20).await.unwrap(),
            Some(f.clone())
        );
        // The stream ends inside the payload: an error, never a short frame.
        let mut cut = &b[..b.len() - 1];
        match Frame::read_from(&mut cut, 1 << 20).await {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("expected an early end, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_read_into_one_buffer_keep_their_own_bytes() {
        // A long frame, then shorter ones, then an empty one, all through one buffer: each
        // payload is exactly its own (nothing left over from the longer one before).
        let frames = [
            Frame::new(FrameKind::Request, 1, vec![0xaa; 9000]),
            Frame::new(FrameKind::Request, 2, b"short".to_vec()),
            Frame::new(FrameKind::Chunk, 3, vec![0x55; 4096]),
            Frame::new(FrameKind::End, 3, Vec::new()),
        ];
        let mut b = Vec::new();
        for f in &frames {
            f.encode_into(&mut b, 1 << 20).unwrap();
        }
        let mut r = &b[..];
        let mut payload = Vec::new();
        for f in &frames {
            let got = Frame::read_into(&mut r, 1 << 20, &mut payload)
                .await
                .unwrap();
            assert_eq!(got, Some((f.kind, f.id)));
            assert_eq!(payload, f.payload);
        }
        assert_eq!(
            Frame::read_into(&mut r, 1 << 20, &mut payload)
                .await
                .unwrap(),
            None
        );
        assert!(payload.is_empty(), "no frame, no bytes");
    }

    proptest! {
        // Fuzz-style: arbitrary peer bytes never panic, and anything accepted re-encodes to
        // exactly the bytes consumed.
        #[test]
        fn decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some((f, used))) = Frame::decode(&bytes, 128) {
                let mut again = Vec::new();
                f.encode_into(&mut again, 128).unwrap();
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
        }

        #[test]
        fn async_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = &bytes[..];
                while let Ok(Some(_)) = Frame::read_from(&mut r, 64).await {}
            });
        }
    }
}
