//! Length-prefixed framing: a 4-byte big-endian payload length, then the payload.
//!
//! A zero length is a keepalive ping (peer protocol `bftcd-peer/2`, negotiated with TLS ALPN;
//! version 1 had no pings and treated a zero length as a violation): it carries nothing and is
//! never delivered. A length above the configured maximum is a protocol violation. The length is
//! checked as soon as the 4 header bytes are available, before any payload is buffered, so a peer
//! can never make us allocate more than `max` (plus one read chunk) per connection.

use std::fmt;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest read issued at once; buffers grow in steps of at most this much.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds the maximum.
    TooLarge { len: u32, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Result of looking at the start of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDecode {
    /// Not enough bytes yet for a whole frame (the header, if present, is valid).
    NeedMore,
    /// A keepalive ping (zero length) sits at the start of the buffer; it occupies `HEADER_LEN`
    /// bytes.
    Ping,
    /// A whole frame with a payload of this many bytes sits at the start of the buffer; it
    /// occupies `HEADER_LEN + len` bytes.
    Frame(usize),
    /// The header is a protocol violation; the connection must be closed.
    Invalid(FrameError),
}

/// Decodes the frame at the start of `buf`, allowing payloads of 1..=`max` bytes (a zero length is
/// a ping). Total: never panics, never allocates.
pub fn decode_frame(buf: &[u8], max: usize) -> FrameDecode {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return FrameDecode::NeedMore;
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if len == 0 {
        return FrameDecode::Ping;
    }
    if u64::from(len) > max as u64 {
        return FrameDecode::Invalid(FrameError::TooLarge { len, max });
    }
    let len = len as usize;
    if buf.len() - HEADER_LEN >= len {
        FrameDecode::Frame(len)
    } else {
        FrameDecode::NeedMore
    }
}

/// The length prefix for a payload of `len` bytes (callers ensure `len` fits a `u32`).
pub fn encode_header(len: usize) -> [u8; HEADER_LEN] {
    (len as u32).to_be_bytes()
}

/// The four bytes of a keepalive ping.
pub(crate) const PING: [u8; HEADER_LEN] = [0; HEADER_LEN];

/// One frame read from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Ping,
    Data(Bytes),
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    Invalid(FrameError),
    /// No byte arrived for the idle limit.
    Silent(Duration),
}

/// Reads the next frame. `Ok(None)` is a clean end of stream at a frame boundary; an end of stream
/// inside a frame is an `UnexpectedEof` I/O error. Fails with [`ReadError::Silent`] when no byte
/// arrives for `idle` (a large frame may take longer than `idle` as long as bytes keep coming).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
    idle: Duration,
) -> Result<Option<Frame>, ReadError> {
    loop {
        match decode_frame(buf, max) {
            FrameDecode::Ping => {
                buf.advance(HEADER_LEN);
                return Ok(Some(Frame::Ping));
            }
            FrameDecode::Frame(len) => {
                let mut frame = buf.split_to(HEADER_LEN + len);
                frame.advance(HEADER_LEN);
                return Ok(Some(Frame::Data(frame.freeze())));
            }
            FrameDecode::Invalid(e) => return Err(ReadError::Invalid(e)),
            FrameDecode::NeedMore => {
                if buf.capacity() - buf.len() == 0 {
                    buf.reserve(READ_CHUNK);
                }
                let n = tokio::time::timeout(idle, r.read_buf(buf))
                    .await
                    .map_err(|_| ReadError::Silent(idle))?
                    .map_err(ReadError::Io)?;
                if n == 0 {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tokio::io::AsyncWriteExt;

    #[test]
    fn decodes_basic_cases() {
        assert_eq!(decode_frame(&[], 10), FrameDecode::NeedMore);
        assert_eq!(decode_frame(&[0, 0, 0], 10), FrameDecode::NeedMore);
        assert_eq!(decode_frame(&[0, 0, 0, 0], 10), FrameDecode::Ping);
        assert_eq!(decode_frame(&[0, 0, 0, 0, 1], 0), FrameDecode::Ping);
        assert_eq!(
            decode_frame(&[0, 0, 0, 11], 10),
            FrameDecode::Invalid(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            decode_frame(&[0xff, 0xff, 0xff, 0xff], usize::MAX),
            FrameDecode::NeedMore
        );
        assert_eq!(decode_frame(&[0, 0, 0, 2, 7], 10), FrameDecode::NeedMore);
        assert_eq!(decode_frame(&[0, 0, 0, 2, 7, 8], 10), FrameDecode::Frame(2));
        assert_eq!(
            decode_frame(&[0, 0, 0, 2, 7, 8, 9], 10),
            FrameDecode::Frame(2)
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 1, 1], 0),
            FrameDecode::Invalid(FrameError::TooLarge { len: 1, max: 0 })
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6266_7463);
        for _ in 0..200_000 {
            let len = rng.gen_range(0..64);
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf[..]);
            // Bias some headers towards small lengths so that whole frames occur too.
            if len >= 4 && rng.gen_bool(0.5) {
                buf[0] = 0;
                buf[1] = 0;
                buf[2] = 0;
                buf[3] = rng.gen_range(0..70);
            }
            let max = match rng.gen_range(0..4) {
                0 => 0,
                1 => rng.gen_range(1..80),
                2 => usize::MAX,
                _ => 16 << 20,
            };
            match decode_frame(&buf, max) {
                FrameDecode::Frame(n) => {
                    assert!(n >= 1 && n <= max && HEADER_LEN + n <= buf.len());
                }
                FrameDecode::NeedMore => {}
                FrameDecode::Ping => assert!(buf.len() >= HEADER_LEN && buf[..4] == PING),
                FrameDecode::Invalid(e) => {
                    assert!(buf.len() >= HEADER_LEN);
                    let _ = e.to_string();
                }
            }
        }
    }

    #[tokio::test]
    async fn reader_splits_stream_into_frames() {
        const IDLE: Duration = Duration::from_secs(5);
        let mut wire = Vec::new();
        for i in 1..=50u8 {
            wire.extend_from_slice(&encode_header(i as usize));
            wire.extend(std::iter::repeat_n(i, i as usize));
            if i % 10 == 0 {
                wire.extend_from_slice(&PING);
            }
        }
        let mut rd = &wire[..];
        let mut buf = BytesMut::new();
        for i in 1..=50u8 {
            let Frame::Data(f) = read_frame(&mut rd, &mut buf, 64, IDLE)
                .await
                .unwrap()
                .unwrap()
            else {
                panic!("frame {i} read as a ping");
            };
            assert_eq!(f.len(), i as usize);
            assert!(f.iter().all(|&b| b == i));
            if i % 10 == 0 {
                let p = read_frame(&mut rd, &mut buf, 64, IDLE).await.unwrap();
                assert_eq!(p, Some(Frame::Ping));
            }
        }
        assert!(read_frame(&mut rd, &mut buf, 64, IDLE)
            .await
            .unwrap()
            .is_none());

        let truncated = [0u8, 0, 0, 5, 1, 2];
        let mut rd = &truncated[..];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut rd, &mut buf, 64, IDLE).await,
            Err(ReadError::Io(_))
        ));

        let huge = [0xffu8, 0xff, 0xff, 0xff];
        let mut rd = &huge[..];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut rd, &mut buf, 64, IDLE).await,
            Err(ReadError::Invalid(FrameError::TooLarge { .. }))
        ));
        assert!(buf.capacity() <= READ_CHUNK);
    }

    #[tokio::test]
    async fn reader_gives_up_on_silence_not_on_slow_progress() {
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let idle = Duration::from_millis(600);
        let writer = tokio::spawn(async move {
            // One 8-byte frame trickled a byte every 200 ms: slower than `idle` overall, but
            // never silent for `idle`.
            tx.write_all(&encode_header(8)).await.unwrap();
            for b in 0..8u8 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                tx.write_all(&[b]).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        let mut buf = BytesMut::new();
        let f = read_frame(&mut rx, &mut buf, 64, idle).await.unwrap();
        assert_eq!(
            f,
            Some(Frame::Data(Bytes::from_static(&[0, 1, 2, 3, 4, 5, 6, 7])))
        );
        let start = tokio::time::Instant::now();
        assert!(matches!(
            read_frame(&mut rx, &mut buf, 64, idle).await,
            Err(ReadError::Silent(_))
        ));
        let waited = start.elapsed();
        assert!(waited >= idle && waited < idle * 3, "{waited:?}");
        writer.abort();
    }
}
