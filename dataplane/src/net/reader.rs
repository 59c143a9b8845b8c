//! Reading whole frames from a socket into a reusable buffer.
//!
//! Both readers are cancel-safe: all progress lives in the caller's `BytesMut`, and tokio's
//! `read_buf` either appends bytes or does nothing, so a `select!` that drops the future loses
//! nothing. Buffer growth is bounded per read, so a peer declaring a 100 MB message must actually
//! send 100 MB before we hold 100 MB.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::framing::{peek_header, peek_startup_len, FrameError};

/// How much we reserve per read at most. Larger frames grow the buffer as their bytes arrive.
const READ_CHUNK: usize = 64 * 1024;
/// How much we reserve when nothing tells us the size of what comes next.
const MIN_READ: usize = 8 * 1024;

/// A frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,
}

/// Reserves room for the next read: up to what the current frame still needs, capped at
/// [`READ_CHUNK`], never less than [`MIN_READ`] so small frames batch into one read.
fn reserve_for(buf: &mut BytesMut, frame_len: Option<usize>) {
    let missing = frame_len.map_or(0, |len| len.saturating_sub(buf.len()));
    buf.reserve(missing.clamp(MIN_READ, READ_CHUNK));
}

/// Reads one more chunk; maps EOF to `Ok(None)` if `buf` is empty, else to `UnexpectedEof`.
async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    frame_len: Option<usize>,
) -> Result<Option<()>, ReadError> {
    reserve_for(buf, frame_len);
    if r.read_buf(buf).await? == 0 {
        return if buf.is_empty() {
            Ok(None)
        } else {
            Err(ReadError::UnexpectedEof)
        };
    }
    Ok(Some(()))
}

/// Reads until one whole tagged frame is buffered and splits it off (tag and length included).
///
/// Returns `Ok(None)` on a clean EOF before any byte of a frame. Bytes after the frame stay in
/// `buf` for the next call. `max` bounds the total frame length.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, ReadError> {
    loop {
        let header = peek_header(buf, max)?;
        if let Some(h) = header {
            if buf.len() >= h.len {
                return Ok(Some(buf.split_to(h.len).freeze()));
            }
        }
        if fill(r, buf, header.map(|h| h.len)).await?.is_none() {
            return Ok(None);
        }
    }
}

/// Reads until one whole untagged startup-phase packet (StartupMessage, SSLRequest,
/// CancelRequest, GSSENCRequest) is buffered and splits it off, length included.
///
/// Same EOF semantics as [`read_frame`]; the bound is `min(max, MAX_STARTUP_PACKET)`.
pub async fn read_startup_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, ReadError> {
    loop {
        let len = peek_startup_len(buf, max)?;
        if let Some(len) = len {
            if buf.len() >= len {
                return Ok(Some(buf.split_to(len).freeze()));
            }
        }
        if fill(r, buf, len).await?.is_none() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;
    use tokio::io::{AsyncWriteExt, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::net::framing::DEFAULT_MAX_MESSAGE;
    use crate::net::messages::{build_parameter_status, build_query, build_ready_for_query};

    /// A reader that hands out pre-cut chunks, one per `poll_read`, to exercise every split point.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    fn sample_frames() -> Vec<Bytes> {
        vec![
            build_query("select 1"),
            build_parameter_status("TimeZone", "UTC"),
            build_ready_for_query(b'I'),
            build_query(&"x".repeat(100_000)),
        ]
    }

    #[tokio::test]
    async fn one_byte_at_a_time_over_tcp() {
        let (mut w, mut r) = pair().await;
        w.set_nodelay(true).unwrap();
        let frames = sample_frames();
        let all: Vec<u8> = frames[..3].iter().flat_map(|f| f.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for b in all {
                w.write_all(&[b]).await.unwrap();
                w.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut buf = BytesMut::new();
        for f in &frames[..3] {
            assert_eq!(
                read_frame(&mut r, &mut buf, 1024).await.unwrap().as_ref(),
                Some(f)
            );
        }
        writer.await.unwrap();
        assert_eq!(read_frame(&mut r, &mut buf, 1024).await.unwrap(), None);
    }

    #[tokio::test]
    async fn many_frames_per_read() {
        let (mut w, mut r) = pair().await;
        let frames = sample_frames();
        let all: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        w.write_all(&all).await.unwrap();
        drop(w);
        let mut buf = BytesMut::new();
        for f in &frames {
            assert_eq!(
                read_frame(&mut r, &mut buf, DEFAULT_MAX_MESSAGE)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(f)
            );
        }
        assert_eq!(
            read_frame(&mut r, &mut buf, DEFAULT_MAX_MESSAGE)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn bad_lengths_are_errors() {
        for (input, limit) in [
            (&b"Q\xff\xff\xff\xf0"[..], DEFAULT_MAX_MESSAGE),
            (b"Q\0\0\0\x03", DEFAULT_MAX_MESSAGE),
            (b"Q\x7f\xff\xff\xff", DEFAULT_MAX_MESSAGE),
            (b"Q\0\0\x10\0", 1024),
        ] {
            let mut r = Chunks(vec![input.to_vec()].into());
            let mut buf = BytesMut::new();
            let err = read_frame(&mut r, &mut buf, limit).await.unwrap_err();
            assert!(matches!(err, ReadError::Frame(_)), "{err:?}");
            assert!(buf.capacity() <= 2 * READ_CHUNK);
        }
    }

    #[tokio::test]
    async fn declared_size_is_not_allocated_up_front() {
        // Declares 100 MB but sends only 10 bytes then EOF.
        let mut input = b"d\x05\xf5\xe1\x00".to_vec();
        input.extend_from_slice(&[0; 10]);
        let mut r = Chunks(vec![input].into());
        let mut buf = BytesMut::new();
        let err = read_frame(&mut r, &mut buf, DEFAULT_MAX_MESSAGE)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::UnexpectedEof), "{err:?}");
        assert!(
            buf.capacity() <= 2 * READ_CHUNK,
            "capacity {}",
            buf.capacity()
        );
    }

    #[tokio::test]
    async fn eof_mid_header_and_mid_body() {
        for input in [&b"Q\0\0"[..], b"Q\0\0\0\x09sel"] {
            let mut r = Chunks(vec![input.to_vec()].into());
            let mut buf = BytesMut::new();
            assert!(matches!(
                read_frame(&mut r, &mut buf, 1024).await,
                Err(ReadError::UnexpectedEof)
            ));
        }
    }

    #[tokio::test]
    async fn startup_frames() {
        use crate::net::messages::{build_ssl_request, build_startup};
        let a = build_ssl_request();
        let b = build_startup(&[("user", "u"), ("database", "d")]);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut r = Chunks(all.chunks(3).map(<[u8]>::to_vec).collect());
        let mut buf = BytesMut::new();
        assert_eq!(
            read_startup_frame(&mut r, &mut buf, 1024).await.unwrap(),
            Some(a)
        );
        assert_eq!(
            read_startup_frame(&mut r, &mut buf, 1024).await.unwrap(),
            Some(b)
        );
        assert_eq!(
            read_startup_frame(&mut r, &mut buf, 1024).await.unwrap(),
            None
        );
        let mut r = Chunks(vec![b"\0\0\x30\0".to_vec()].into());
        assert!(matches!(
            read_startup_frame(&mut r, &mut BytesMut::new(), DEFAULT_MAX_MESSAGE).await,
            Err(ReadError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(tag, body)| {
            let mut f = vec![tag];
            f.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
            f.extend_from_slice(&body);
            f
        })
    }

    proptest! {
        #[test]
        fn split_points_do_not_matter(
            frames in proptest::collection::vec(frame_strategy(), 0..20),
            cuts in proptest::collection::vec(1usize..64, 0..200),
        ) {
            let all: Vec<u8> = frames.concat();
            let mut chunks = std::collections::VecDeque::new();
            let mut rest = &all[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(7).min(rest.len());
                chunks.push_back(rest[..n].to_vec());
                rest = &rest[n..];
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(async {
                let mut r = Chunks(chunks);
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                while let Some(f) = read_frame(&mut r, &mut buf, 1024).await.unwrap() {
                    got.push(f.to_vec());
                }
                got
            });
            prop_assert_eq!(got, frames);
        }
    }
}
