//! Bounding what s3s holds in memory of an aws-chunked request body.
//!
//! s3s reads every aws-chunked chunk whole before it passes a byte of it
//! on (it has to, to check a chunk's signature), and the client chooses
//! the chunk size: the AWS CRT sends each part as one chunk, 64 MiB or
//! more, so sixteen parts in flight held a gigabyte, and one request could
//! make the endpoint hold up to the body limit (5 GiB). This module sits
//! between hyper and s3s and re-frames the body as it streams:
//!
//! - An **unsigned chunk** (no `;chunk-signature=` extension:
//!   `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, what aws-cli, boto3 and the CRT
//!   send) is passed on as a run of chunks, one per piece of it that arrived
//!   from the network, so s3s holds at most one network read of it. The
//!   object bytes, the final `0` chunk and the trailers are unchanged; the
//!   unsigned framing is not covered by any signature.
//! - A **signed chunk** (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`)
//!   cannot be split, since its signature covers it whole: it is passed on
//!   verbatim, and a chunk declaring more than the limit
//!   ([`crate::server::ServerLimits::max_signed_chunk`]; SDKs sign 8–128 KiB
//!   chunks) fails the body before any of it is buffered.
//!
//! A malformed frame (a header line over 1 KiB, a size that is not hex, a
//! chunk not followed by CRLF) fails the body at once. Bodies that are not
//! aws-chunked pass through untouched.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;

/// The longest chunk header line (`size[;chunk-signature=…]\r\n`) accepted;
/// s3s's own limit.
const MAX_HEADER_LINE: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a request's body is aws-chunked, by its `x-amz-content-sha256`.
pub fn is_aws_chunked(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"))
}

/// Why an aws-chunked body was refused while it streamed.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("aws-chunked: a chunk header line is longer than {MAX_HEADER_LINE} bytes")]
    HeaderTooLong,
    #[error("aws-chunked: malformed chunk header {0:?}")]
    BadHeader(String),
    #[error("aws-chunked: a chunk's data is not followed by CRLF")]
    MissingCrlf,
    #[error(
        "aws-chunked: a signed chunk of {size} bytes is larger than the limit of {limit} bytes \
         (sign smaller chunks)"
    )]
    SignedChunkTooLarge { size: u64, limit: u64 },
}

/// Where the re-framer is in the body.
#[derive(Debug)]
enum State {
    /// Reading a chunk header line (kept until its CRLF).
    Header(BytesMut),
    /// Inside a chunk's data: `left` bytes to go; a signed chunk's data is
    /// passed on as it is, an unsigned one's re-framed piece by piece.
    Data { left: u64, signed: bool },
    /// The CRLF after a chunk's data: `left` of its 2 bytes to go.
    DataEnd { left: usize, signed: bool },
    /// After the final `0` chunk: trailers, passed on as they are (s3s
    /// bounds them).
    Trailers,
}

/// An aws-chunked request body re-framed so that s3s buffers at most one
/// network read of an unsigned chunk, and at most `max_signed_chunk` bytes
/// of a signed one (see the module doc).
#[derive(Debug)]
pub struct Reframed<B> {
    inner: B,
    max_signed_chunk: u64,
    state: State,
    /// What has arrived from `inner` and is not re-framed yet.
    pending: Bytes,
    /// Re-framed bytes waiting to be passed on.
    out: VecDeque<Bytes>,
    inner_done: bool,
    failed: bool,
}

impl<B> Reframed<B> {
    pub fn new(inner: B, max_signed_chunk: u64) -> Self {
        Reframed {
            inner,
            max_signed_chunk,
            state: State::Header(BytesMut::new()),
            pending: Bytes::new(),
            out: VecDeque::new(),
            inner_done: false,
            failed: false,
        }
    }

    /// Re-frames as much of `pending` as the state allows, queueing output.
    fn step(&mut self) -> Result<(), FramingError> {
        match &mut self.state {
            State::Header(line) => {
                let (take, complete) = match self.pending.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (self.pending.len(), false),
                };
                if line.len() + take > MAX_HEADER_LINE {
                    return Err(FramingError::HeaderTooLong);
                }
                line.extend_from_slice(&self.pending.split_to(take));
                if complete {
                    let line = std::mem::take(line).freeze();
                    self.start_chunk(line)?;
                }
            }
            State::Data { left, signed } => {
                let n = (*left).min(self.pending.len() as u64) as usize;
                let piece = self.pending.split_to(n);
                *left -= n as u64;
                if *signed {
                    self.out.push_back(piece);
                } else {
                    self.out.push_back(Bytes::from(format!("{n:x}\r\n")));
                    self.out.push_back(piece);
                    self.out.push_back(Bytes::from_static(b"\r\n"));
                }
                if *left == 0 {
                    self.state = State::DataEnd {
                        left: 2,
                        signed: *signed,
                    };
                }
            }
            State::DataEnd { left, signed } => {
                let n = (*left).min(self.pending.len());
                let crlf = self.pending.split_to(n);
                if crlf[..] != b"\r\n"[2 - *left..2 - *left + n] {
                    return Err(FramingError::MissingCrlf);
                }
                *left -= n;
                if *signed {
                    self.out.push_back(crlf);
                }
                if *left == 0 {
                    self.state = State::Header(BytesMut::new());
                }
            }
            State::Trailers => {
                let rest = std::mem::take(&mut self.pending);
                self.out.push_back(rest);
            }
        }
        Ok(())
    }

    /// A complete chunk header line (`size[;ext]\r\n`): the chunk it starts.
    fn start_chunk(&mut self, line: Bytes) -> Result<(), FramingError> {
        let bad = || FramingError::BadHeader(String::from_utf8_lossy(&line).into_owned());
        let text = line.strip_suffix(b"\r\n").ok_or_else(bad)?;
        let (size, signed) = match text.iter().position(|&b| b == b';') {
            Some(i) => (&text[..i], true),
            None => (text, false),
        };
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(bad)?;
        if signed && size > self.max_signed_chunk {
            return Err(FramingError::SignedChunkTooLarge {
                size,
                limit: self.max_signed_chunk,
            });
        }
        if size == 0 {
            self.out.push_back(line);
            self.state = State::Trailers;
        } else {
            if signed {
                self.out.push_back(line);
            }
            self.state = State::Data { left: size, signed };
        }
        Ok(())
    }
}

impl<B> http_body::Body for Reframed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.out.pop_front() {
                if !bytes.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                continue;
            }
            if this.failed {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                if let Err(e) = this.step() {
                    this.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                continue;
            }
            if this.inner_done {
                // A body cut short is left for s3s to report as incomplete.
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.inner_done = true,
                Poll::Ready(Some(Err(e))) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // HTTP trailers of the request itself carry no object bytes.
                    if let Ok(data) = frame.into_data() {
                        this.pending = data;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out.is_empty() && self.pending.is_empty() && (self.failed || self.inner_done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Pieces =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

    /// A body arriving as these pieces.
    fn arriving(pieces: &[&[u8]]) -> Pieces {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    /// Every frame the re-framer passes on, or its error.
    async fn reframe(pieces: &[&[u8]], limit: u64) -> Result<Vec<Bytes>, String> {
        let mut body = Reframed::new(arriving(pieces), limit);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            frames.push(frame.into_data().expect("data"));
        }
        Ok(frames)
    }

    fn joined(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[tokio::test]
    async fn an_unsigned_chunk_is_passed_on_as_the_pieces_that_arrived() {
        let frames = reframe(
            &[
                b"a\r\n01234",
                b"56789\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
            ],
            1024,
        )
        .await
        .unwrap();
        assert_eq!(
            joined(&frames),
            b"5\r\n01234\r\n5\r\n56789\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
        );
        // No frame holds more object bytes than one piece that arrived (5).
        let framing_and_data = frames.iter().filter(|f| !f.starts_with(b"x-amz"));
        assert!(framing_and_data.clone().all(|f| f.len() <= 5), "{frames:?}");
    }

    #[tokio::test]
    async fn framing_split_anywhere_reframes_the_same() {
        let body: &[u8] = b"6\r\nabcdef\r\n3\r\nghi\r\n0\r\n\r\n";
        let whole = joined(&reframe(&[body], 1024).await.unwrap());
        assert_eq!(whole, b"6\r\nabcdef\r\n3\r\nghi\r\n0\r\n\r\n");
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let one_by_one = joined(&reframe(&bytes, 1024).await.unwrap());
        let data: Vec<u8> = decoded(&one_by_one);
        assert_eq!(data, b"abcdefghi");
        assert!(one_by_one.ends_with(b"0\r\n\r\n"));
    }

    /// The object bytes of an unsigned aws-chunked body.
    fn decoded(mut body: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let eol = body.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap(), 16).unwrap();
            body = &body[eol + 2..];
            if size == 0 {
                return data;
            }
            data.extend_from_slice(&body[..size]);
            assert_eq!(&body[size..size + 2], b"\r\n");
            body = &body[size + 2..];
        }
    }

    #[tokio::test]
    async fn signed_chunks_pass_verbatim_within_the_limit() {
        let sig = "0".repeat(64);
        let body = format!("4;chunk-signature={sig}\r\nabcd\r\n0;chunk-signature={sig}\r\n\r\n");
        let frames = reframe(&[body.as_bytes()], 4).await.unwrap();
        assert_eq!(joined(&frames), body.as_bytes());
    }

    #[tokio::test]
    async fn a_signed_chunk_over_the_limit_fails_before_its_data() {
        let sig = "0".repeat(64);
        let body = format!("400001;chunk-signature={sig}\r\n");
        let e = reframe(&[body.as_bytes()], 4 << 20).await.unwrap_err();
        assert!(
            e.contains("signed chunk of 4194305 bytes") && e.contains("4194304"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn malformed_frames_fail_the_body() {
        let long = vec![b'1'; 2000];
        assert!(reframe(&[&long], 1024)
            .await
            .unwrap_err()
            .contains("longer than"));
        assert!(reframe(&[b"zz\r\n"], 1024)
            .await
            .unwrap_err()
            .contains("malformed"));
        assert!(reframe(&[b"2\r\nabXY"], 1024)
            .await
            .unwrap_err()
            .contains("CRLF"));
        assert!(reframe(&[b"2\n"], 1024)
            .await
            .unwrap_err()
            .contains("malformed"));
    }

    #[tokio::test]
    async fn a_body_cut_short_ends_without_inventing_bytes() {
        let frames = reframe(&[b"a\r\n0123"], 1024).await.unwrap();
        assert_eq!(joined(&frames), b"4\r\n0123\r\n");
    }

    #[test]
    fn only_streaming_payloads_are_aws_chunked() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_aws_chunked(&headers));
        headers.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert!(!is_aws_chunked(&headers));
        for v in [
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        ] {
            headers.insert("x-amz-content-sha256", v.parse().unwrap());
            assert!(is_aws_chunked(&headers));
        }
    }
}
