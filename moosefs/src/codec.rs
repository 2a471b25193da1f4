//! Packet framing for both MooseFS links: `type:u32 length:u32 payload`,
//! big-endian. Owns building packets ([`Packet`]), parsing payloads
//! ([`PayloadReader`]) and reading whole frames off a stream ([`FrameReader`]),
//! where an incomplete frame is "read more", not an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of the `type + length` header.
pub const HEADER_LEN: usize = 8;

/// A payload that does not have the layout its message type promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    pub fn new(msg: impl Into<String>) -> Self {
        ProtocolError(msg.into())
    }
}

/// A packet being built. The header's length field is filled by [`Packet::finish`].
pub struct Packet {
    buf: BytesMut,
}

impl Packet {
    /// Starts a packet of type `kind` with room for `capacity` payload bytes.
    pub fn new(kind: u32, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + capacity);
        buf.put_u32(kind);
        buf.put_u32(0);
        Packet { buf }
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.buf.put_u8(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.buf.put_u16(v);
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.buf.put_u32(v);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.put_u64(v);
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.put_slice(v);
        self
    }
    /// A `NAME`: `len:u8` + bytes. The caller has validated the length.
    pub fn name(mut self, name: &[u8]) -> Self {
        debug_assert!(name.len() <= 255);
        self.buf.put_u8(name.len() as u8);
        self.buf.put_slice(name);
        self
    }
    /// Credentials in the "new" shape: `uid gcnt=1 gid`.
    pub fn ugid(self, uid: u32, gid: u32) -> Self {
        self.u32(uid).u32(1).u32(gid)
    }

    /// Fills in the payload length and returns the wire bytes.
    pub fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - HEADER_LEN) as u32;
        self.buf[4..8].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }
}

/// A cursor over a received payload; every read checks the remaining length.
pub struct PayloadReader {
    buf: Bytes,
}

impl PayloadReader {
    pub fn new(buf: Bytes) -> Self {
        PayloadReader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.remaining() < n {
            Err(ProtocolError::new(format!(
                "payload too short: need {n} more bytes, have {}",
                self.buf.remaining()
            )))
        } else {
            Ok(())
        }
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    /// A `NAME`: `len:u8` + bytes.
    pub fn name(&mut self) -> Result<Bytes, ProtocolError> {
        let len = self.u8()? as usize;
        self.bytes(len)
    }
    /// The rest of the payload.
    pub fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }
    /// Fails unless everything was consumed.
    pub fn finish(&self, what: &str) -> Result<(), ProtocolError> {
        if self.buf.has_remaining() {
            Err(ProtocolError::new(format!(
                "{what}: {} unexpected trailing bytes",
                self.buf.remaining()
            )))
        } else {
            Ok(())
        }
    }
}

/// The `(type, payload length)` of the frame at the start of `buf`, once its
/// header is complete (`None` before); a length above `max_payload` is an
/// error before anything is allocated for it.
pub fn decode_frame_header(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(u32, usize)>, ProtocolError> {
    let (Some(kind), Some(len)) = (buf.get(0..4), buf.get(4..8)) else {
        return Ok(None);
    };
    let kind = u32::from_be_bytes(kind.try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > max_payload {
        return Err(ProtocolError::new(format!(
            "packet type {kind} announces {len} bytes, limit {max_payload}"
        )));
    }
    Ok(Some((kind, len)))
}

/// One received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u32,
    pub payload: Bytes,
}

/// Reads whole frames from a byte stream through one reusable buffer.
pub struct FrameReader<R> {
    stream: R,
    buf: BytesMut,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `max_payload` bounds what a peer may make us allocate.
    pub fn new(stream: R, max_payload: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(128 * 1024),
            max_payload,
        }
    }

    /// Parses one frame if the buffer holds a whole one.
    fn parse(&mut self) -> std::io::Result<Option<Frame>> {
        let Some((kind, len)) = decode_frame_header(&self.buf, self.max_payload)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { kind, payload }))
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(128 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a packet",
                    ))
                };
            }
        }
    }

    /// Gives back the stream (any buffered bytes are dropped).
    pub fn into_inner(self) -> R {
        self.stream
    }

    /// Whether bytes of a next frame are already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_header_carries_payload_length() {
        let p = Packet::new(0x1B4, 8).u32(9).u64(0x240).finish();
        assert_eq!(&p[..8], &[0, 0, 1, 0xB4, 0, 0, 0, 12]);
        assert_eq!(p.len(), 20);
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let a = Packet::new(211, 13).u64(0x240).u32(0).u8(0).finish();
        let b = Packet::new(0, 0).finish();
        let mut wire = a.to_vec();
        wire.extend_from_slice(&b);
        // A reader that yields one byte at a time.
        let (client, mut server) = tokio::io::duplex(1);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            server.write_all(&wire).await.unwrap();
        });
        let mut reader = FrameReader::new(client, 1 << 20);
        let f1 = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(f1.kind, 211);
        assert_eq!(f1.payload.len(), 13);
        let f2 = reader.read_frame().await.unwrap().unwrap();
        assert_eq!((f2.kind, f2.payload.len()), (0, 0));
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_and_truncated_frames_are_errors() {
        let big = Packet::new(1, 0).finish();
        let mut wire = big.to_vec();
        wire[4..8].copy_from_slice(&1000u32.to_be_bytes());
        let mut reader = FrameReader::new(&wire[..], 100);
        assert!(reader.read_frame().await.is_err());
        let mut reader = FrameReader::new(&wire[..], 10_000);
        let err = reader.read_frame().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn payload_reader_reports_short_payloads() {
        let mut r = PayloadReader::new(Bytes::from_static(&[0, 1, 2]));
        assert_eq!(r.u16().unwrap(), 1);
        assert!(r.u32().is_err());
    }
}
