//! Registration with the master: the TCP connection, the register
//! exchange (packets without a message id), the password challenge, resuming
//! a session after a dropped link (RECONNECT) or starting a new one
//! (NEWSESSION), and the decoders of their answers.

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::codec::{FrameReader, Packet, PayloadReader, ProtocolError};
use crate::config::MasterConfig;
use crate::error::{MfsError, Result};
use crate::proto::{msg, register, Status, CLIENT_VERSION, REGISTER_BLOB_ACL};

/// Largest answer we accept from the master.
const MAX_MASTER_PAYLOAD: usize = 64 << 20;

/// What the master told us at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub master_version: u32,
    pub session_id: u32,
    pub meta_id: u64,
    pub flags: u8,
    pub min_goal: u8,
    pub max_goal: u8,
}

impl SessionInfo {
    /// The master's version as `major.mid.minor`.
    pub fn master_version_string(&self) -> String {
        let v = self.master_version;
        format!("{}.{}.{}", v >> 16, (v >> 8) & 0xFF, (v & 0xFF) / 2)
    }
}

/// A TCP connection to the master's client port (no delay), under the
/// configured connect timeout.
pub(crate) async fn connect_tcp(cfg: &MasterConfig) -> Result<TcpStream> {
    let unreachable = |error| MfsError::MasterUnreachable {
        addr: cfg.addr.clone(),
        error,
    };
    let stream = match timeout(cfg.connect_timeout, TcpStream::connect(&cfg.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e)),
        Err(_) => {
            return Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", cfg.connect_timeout),
            )))
        }
    };
    stream.set_nodelay(true).map_err(unreachable)?;
    Ok(stream)
}

/// Sends one register packet and reads the (msgid-less) register answer.
async fn register_exchange(
    cfg: &MasterConfig,
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    packet: Bytes,
) -> Result<Bytes> {
    let io = |e: std::io::Error| MfsError::MasterUnreachable {
        addr: cfg.addr.clone(),
        error: e,
    };
    timeout(cfg.connect_timeout, writer.write_all(&packet))
        .await
        .map_err(|_| MfsError::Timeout {
            after: cfg.connect_timeout,
            what: "sending register request".into(),
        })?
        .map_err(io)?;
    loop {
        let frame = timeout(cfg.request_timeout, reader.read_frame())
            .await
            .map_err(|_| MfsError::Timeout {
                after: cfg.request_timeout,
                what: "register answer".into(),
            })?
            .map_err(io)?
            .ok_or_else(|| {
                MfsError::SessionRefused("master closed the connection during registration".into())
            })?;
        match frame.kind {
            msg::MATOCL_FUSE_REGISTER => return Ok(frame.payload),
            msg::ANTOAN_NOP => continue,
            other => {
                return Err(ProtocolError::new(format!(
                    "unexpected packet type {other} during registration"
                ))
                .into())
            }
        }
    }
}

pub(super) fn register_packet(rcode: u8, capacity: usize) -> Packet {
    Packet::new(msg::CLTOMA_FUSE_REGISTER, 65 + capacity)
        .bytes(REGISTER_BLOB_ACL)
        .u8(rcode)
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A fresh connection to the master, before or after registration.
pub(super) type MasterLink = (FrameReader<OwnedReadHalf>, OwnedWriteHalf);

/// Connects and splits the stream into a frame reader and a writer.
async fn open_link(cfg: &MasterConfig) -> Result<MasterLink> {
    let stream = connect_tcp(cfg).await?;
    let (rd, wr) = stream.into_split();
    Ok((FrameReader::new(rd, MAX_MASTER_PAYLOAD), wr))
}

/// Opens a connection and registers: resumes `resume` if given, else (or if the
/// master no longer knows it) starts a new session.
pub(super) async fn open_session(
    cfg: &MasterConfig,
    resume: Option<SessionInfo>,
) -> Result<(FrameReader<OwnedReadHalf>, OwnedWriteHalf, SessionInfo)> {
    let (mut reader, mut wr) = open_link(cfg).await?;

    if let Some(old) = resume {
        let packet = register_packet(register::RECONNECT, 16)
            .u32(old.session_id)
            .u32(CLIENT_VERSION)
            .u64(old.meta_id)
            .finish();
        let answer = register_exchange(cfg, &mut reader, &mut wr, packet).await?;
        let status = reconnect_status(&answer)?;
        if status == Status::OK {
            return Ok((reader, wr, old));
        }
        tracing::warn!(%status, session_id = old.session_id, "master did not resume the session; registering a new one");
        // The master closes the connection after a failed reconnect: start over.
        (reader, wr) = open_link(cfg).await?;
    }

    let digest = match &cfg.password {
        Some(password) => Some(password_digest(cfg, &mut reader, &mut wr, password).await?),
        None => None,
    };
    let info = nul_terminated(&cfg.client_info);
    let path = nul_terminated(&cfg.subfolder);
    let mut packet = register_packet(register::NEWSESSION, 12 + info.len() + path.len() + 16)
        .u32(CLIENT_VERSION)
        .u32(info.len() as u32)
        .bytes(&info)
        .u32(path.len() as u32)
        .bytes(&path);
    if let Some(d) = digest {
        packet = packet.bytes(&d);
    }
    let answer = register_exchange(cfg, &mut reader, &mut wr, packet.finish()).await?;
    let info = parse_new_session(&answer)?;
    Ok((reader, wr, info))
}

/// The password challenge: asks the master for 32 random bytes and answers
/// `MD5(random[0..16] ++ MD5(password) ++ random[16..32])`.
async fn password_digest(
    cfg: &MasterConfig,
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    password: &str,
) -> Result<[u8; 16]> {
    let packet = register_packet(register::GETRANDOM, 0).finish();
    let random = register_exchange(cfg, reader, writer, packet).await?;
    if random.len() != 32 {
        return Err(ProtocolError::new(format!(
            "GETRANDOM answer of {} bytes, expected 32",
            random.len()
        ))
        .into());
    }
    let pass_md5 = Md5::digest(password.as_bytes());
    let mut h = Md5::new();
    h.update(&random[0..16]);
    h.update(pass_md5);
    h.update(&random[16..32]);
    Ok(h.finalize().into())
}

/// The status of a RECONNECT answer (1 byte, or 5 with a version before it).
pub fn reconnect_status(answer: &[u8]) -> Result<Status, ProtocolError> {
    match *answer {
        [_, _, _, _, status] | [status] => Ok(Status(status)),
        _ => Err(ProtocolError::new(format!(
            "reconnect answer of {} bytes",
            answer.len()
        ))),
    }
}

/// The NEWSESSION answer: a status (refused), a redirect, or the 49-byte
/// session record.
pub fn parse_new_session(answer: &Bytes) -> Result<SessionInfo> {
    match answer.len() {
        1 => {
            let status = Status(answer[0]);
            let why = match status {
                Status::NOPASSWORD => "the export requires a password".to_string(),
                Status::BADPASSWORD => "wrong password".to_string(),
                Status::EACCES => "this client is not allowed by the master's exports".to_string(),
                other => other.to_string(),
            };
            Err(MfsError::SessionRefused(why))
        }
        4 => Err(MfsError::SessionRefused(
            "master redirected to another leader (not supported)".into(),
        )),
        49 => {
            let mut r = PayloadReader::new(answer.clone());
            let master_version = r.u32()?;
            let session_id = r.u32()?;
            let meta_id = r.u64()?;
            let flags = r.u8()?;
            let _umask = r.u16()?;
            let _rootuid = r.u32()?;
            let _rootgid = r.u32()?;
            let _mapalluid = r.u32()?;
            let _mapallgid = r.u32()?;
            let min_goal = r.u8()?;
            let max_goal = r.u8()?;
            Ok(SessionInfo {
                master_version,
                session_id,
                meta_id,
                flags,
                min_goal,
                max_goal,
            })
        }
        n => Err(ProtocolError::new(format!("register answer of {n} bytes")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_answer_of_49_bytes_is_decoded() {
        let hex = [
            "000300ea",
            "0000000a",
            "6b011fb5961c7ef0",
            "08",
            "0000",
            "00000000",
            "00000000",
            "000003e7",
            "000003e7",
            "01",
            "09",
            "00000000",
            "ffffffff",
            "00000000",
        ]
        .concat();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let info = parse_new_session(&Bytes::from(bytes)).unwrap();
        assert_eq!(info.session_id, 10);
        assert_eq!(info.meta_id, 0x6b01_1fb5_961c_7ef0);
        assert_eq!(info.master_version_string(), "3.0.117");
        assert_eq!((info.min_goal, info.max_goal), (1, 9));
    }

    #[test]
    fn password_refusals_are_explained() {
        let err = parse_new_session(&Bytes::from_static(&[37])).unwrap_err();
        assert!(err.to_string().contains("wrong password"), "{err}");
    }
}
