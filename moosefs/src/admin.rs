//! Admin requests: what the master answers only on a connection that has
//! not registered a session (what `mfscli` asks), each on a short-lived
//! connection of its own — the chunkserver list ([`crate::cservers`]) and
//! the inodes a session holds open ([`list_open_files`]).

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::codec::{FrameReader, Packet, ProtocolError};
use crate::config::MasterConfig;
use crate::error::{MfsError, Result};
use crate::master::connect_tcp;
use crate::proto::msg;

/// Most inodes accepted in one open-files answer (bounds what the master
/// may make us read: 4 bytes each).
pub const MAX_OPEN_FILES: usize = 1 << 20;

/// Sends `request` on a fresh connection and returns the payload of the
/// first answer of type `answer_kind` (NOPs skipped), each step under the
/// configured connect / request timeouts; `what` names it in errors.
pub(crate) async fn admin_request(
    cfg: &MasterConfig,
    request: Bytes,
    answer_kind: u32,
    max_payload: usize,
    what: &'static str,
) -> Result<Bytes> {
    let stream = connect_tcp(cfg).await?;
    let (rd, mut wr) = stream.into_split();
    let io = |error: std::io::Error| MfsError::MasterUnreachable {
        addr: cfg.addr.clone(),
        error,
    };
    timeout(cfg.connect_timeout, wr.write_all(&request))
        .await
        .map_err(|_| MfsError::Timeout {
            after: cfg.connect_timeout,
            what: format!("sending the request for {what}"),
        })?
        .map_err(io)?;
    let mut reader = FrameReader::new(rd, max_payload);
    let answer = timeout(cfg.request_timeout, async {
        loop {
            match reader.read_frame().await.map_err(io)? {
                None => return Err(MfsError::Disconnected),
                Some(frame) if frame.kind == msg::ANTOAN_NOP => continue,
                Some(frame) if frame.kind == answer_kind => return Ok(frame.payload),
                Some(frame) => {
                    return Err(ProtocolError::new(format!(
                        "unexpected packet type {} instead of {what}",
                        frame.kind
                    ))
                    .into())
                }
            }
        }
    })
    .await
    .map_err(|_| MfsError::Timeout {
        after: cfg.request_timeout,
        what: what.into(),
    })??;
    let _ = wr.shutdown().await;
    Ok(answer)
}

/// The inodes master session `session_id` holds open (`CLTOMA_LIST_OPEN_FILES`,
/// 532: `msgid:u32 sessionid:u32`, answered by 533 `msgid:u32` then
/// `inode:u32` per open file; MooseFS 3.0.117 `matoclserv_list_open_files`,
/// `of_lsof`), sorted. A file stays in it from its OPEN or CREATE until the
/// session's sustained-inodes list leaves it out or the session closes.
pub async fn list_open_files(cfg: &MasterConfig, session_id: u32) -> Result<Vec<u32>> {
    let request = Packet::new(msg::CLTOMA_LIST_OPEN_FILES, 8)
        .u32(1)
        .u32(session_id)
        .finish();
    let answer = admin_request(
        cfg,
        request,
        msg::MATOCL_LIST_OPEN_FILES,
        4 + 4 * MAX_OPEN_FILES,
        "the open-files list",
    )
    .await?;
    Ok(parse_open_files(answer)?)
}

/// Parses a `MATOCL_LIST_OPEN_FILES` payload (with its message id).
pub fn parse_open_files(payload: Bytes) -> std::result::Result<Vec<u32>, ProtocolError> {
    if payload.len() < 4 || !payload.len().is_multiple_of(4) {
        return Err(ProtocolError::new(format!(
            "open-files list of {} bytes",
            payload.len()
        )));
    }
    let mut inodes: Vec<u32> = payload[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .collect();
    inodes.sort_unstable();
    Ok(inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_parsed_after_the_message_id() {
        let mut p = vec![0, 0, 0, 1];
        p.extend(9u32.to_be_bytes());
        p.extend(3u32.to_be_bytes());
        assert_eq!(parse_open_files(p.into()).unwrap(), vec![3, 9]);
        assert!(parse_open_files(Bytes::from_static(&[0, 0, 0, 1]))
            .unwrap()
            .is_empty());
        for bad in [&[][..], &[0, 0, 0], &[0, 0, 0, 1, 7]] {
            assert!(parse_open_files(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
