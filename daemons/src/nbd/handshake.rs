//! The fixed newstyle handshake: greeting, client flags, then options until
//! the client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or
//! leaves.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use pstorage_core::{Error, ErrorKind, Result};

use super::export::{ExportHandle, ExportInfo, Exports};
use super::proto::*;
use super::NbdError;

/// Largest option payload read; a bigger one ends the connection (the
/// protocol allows that for what looks like a denial of service; the
/// largest legitimate option is an export name of 4 KiB plus a few bytes).
const MAX_OPTION_BYTES: u32 = 64 << 10;
/// Options one connection may send before it is cut off.
const MAX_OPTIONS: usize = 1000;

/// How the handshake ended.
pub enum Negotiated {
    /// Transmission starts on this export.
    Export(ExportHandle),
    /// The client aborted or left; nothing to serve.
    Done,
    /// The client asked for TLS (`NBD_OPT_STARTTLS`, acknowledged): the
    /// TLS handshake follows on the same connection, then the options go
    /// on inside it ([`negotiate_in_tls`]).
    StartTls {
        /// The client's `NBD_FLAG_C_NO_ZEROES`.
        no_zeroes: bool,
    },
}

/// Where a connection stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// This server offers no TLS: `NBD_OPT_STARTTLS` is refused.
    Unavailable,
    /// TLS is offered and required: before it, every option but
    /// `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is answered
    /// `NBD_REP_ERR_TLS_REQD` (and `NBD_OPT_EXPORT_NAME`, which cannot be
    /// answered an error, ends the connection).
    Required,
    /// The options are inside TLS.
    Established,
}

/// Runs the server side of the handshake on `stream`: the greeting, the
/// client's flags, then the options. `Err` means the connection must be
/// dropped (I/O error or a protocol violation); the message says why.
pub async fn negotiate<S>(
    stream: &mut S,
    exports: &Arc<Exports>,
    tls: TlsState,
) -> Result<Negotiated>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&INIT_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting).await?;
    stream.flush().await?;

    let client_flags = stream.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::UnknownClientFlags(client_flags).into());
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    options(stream, exports, no_zeroes, tls).await
}

/// The options after `NBD_OPT_STARTTLS`, on the TLS stream.
pub async fn negotiate_in_tls<S>(
    stream: &mut S,
    exports: &Arc<Exports>,
    no_zeroes: bool,
) -> Result<Negotiated>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    options(stream, exports, no_zeroes, TlsState::Established).await
}

async fn options<S>(
    stream: &mut S,
    exports: &Arc<Exports>,
    no_zeroes: bool,
    tls: TlsState,
) -> Result<Negotiated>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..MAX_OPTIONS {
        let magic = stream.read_u64().await?;
        if magic != OPTS_MAGIC {
            return Err(NbdError::BadOptionMagic(magic).into());
        }
        let option = stream.read_u32().await?;
        let len = stream.read_u32().await?;
        if len > MAX_OPTION_BYTES {
            return Err(NbdError::OptionTooLong {
                option,
                len,
                limit: MAX_OPTION_BYTES,
            }
            .into());
        }
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).await?;

        if tls == TlsState::Required && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
            if option == OPT_EXPORT_NAME {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    "NBD_OPT_EXPORT_NAME before TLS on a TLS-only server: refused",
                ));
            }
            reply_error(
                stream,
                option,
                REP_ERR_TLS_REQD,
                "this server requires TLS (NBD_OPT_STARTTLS) first",
            )
            .await?;
            continue;
        }
        match option {
            OPT_EXPORT_NAME => {
                // This option cannot answer an error: refusing means hanging up.
                let handle = match exports.resolve(&data) {
                    Ok(path) => exports.acquire(&path).await,
                    Err(e) => Err(e),
                };
                let handle = handle.map_err(|e| e.context("NBD_OPT_EXPORT_NAME refused"))?;
                let info = handle.export().info();
                let mut reply = Vec::with_capacity(134);
                reply.extend_from_slice(&info.size_bytes.to_be_bytes());
                reply.extend_from_slice(&info.flags.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                if let Err(e) = write_flush(stream, &reply).await {
                    handle.release().await;
                    return Err(e);
                }
                return Ok(Negotiated::Export(handle));
            }
            OPT_ABORT => {
                // The client may already be gone; that is fine.
                let _ = write_flush(stream, &option_reply(option, REP_ACK, &[])).await;
                return Ok(Negotiated::Done);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_error(
                        stream,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    )
                    .await?;
                    continue;
                }
                match exports.list().await {
                    Ok(files) => {
                        let mut out = Vec::new();
                        for (path, size) in files {
                            let mut d = Vec::with_capacity(4 + path.len() + 24);
                            d.extend_from_slice(&(path.len() as u32).to_be_bytes());
                            d.extend_from_slice(path.as_bytes());
                            d.extend_from_slice(format!("{size} bytes").as_bytes());
                            out.extend_from_slice(&option_reply(option, REP_SERVER, &d));
                        }
                        out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
                        write_flush(stream, &out).await?;
                    }
                    Err(e) => {
                        let msg = format!("listing the cluster's files failed: {e}");
                        reply_error(stream, option, REP_ERR_POLICY, &msg).await?;
                    }
                }
            }
            OPT_STARTTLS => match tls {
                TlsState::Unavailable => {
                    reply_error(
                        stream,
                        option,
                        REP_ERR_POLICY,
                        "this nbd-serve offers no TLS (start it with --tls)",
                    )
                    .await?;
                }
                TlsState::Established => {
                    reply_error(
                        stream,
                        option,
                        REP_ERR_INVALID,
                        "TLS is already established",
                    )
                    .await?;
                }
                TlsState::Required => {
                    if !data.is_empty() {
                        reply_error(
                            stream,
                            option,
                            REP_ERR_INVALID,
                            "NBD_OPT_STARTTLS takes no data",
                        )
                        .await?;
                        continue;
                    }
                    write_flush(stream, &option_reply(option, REP_ACK, &[])).await?;
                    return Ok(Negotiated::StartTls { no_zeroes });
                }
            },
            OPT_INFO | OPT_GO => {
                let request = match parse_info_request(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply_error(stream, option, REP_ERR_INVALID, e.message()).await?;
                        continue;
                    }
                };
                let path = match exports.resolve(&request.name) {
                    Ok(p) => p,
                    Err(e) => {
                        let kind = if e.kind() == pstorage_core::ErrorKind::PermissionDenied {
                            REP_ERR_POLICY
                        } else {
                            REP_ERR_UNKNOWN
                        };
                        reply_error(stream, option, kind, e.message()).await?;
                        continue;
                    }
                };
                if option == OPT_INFO {
                    match exports.info(&path).await {
                        Ok(info) => {
                            write_flush(stream, &info_replies(option, &path, &request, info))
                                .await?
                        }
                        Err(e) => refuse(stream, option, &path, &e).await?,
                    }
                    continue;
                }
                let handle = match exports.acquire(&path).await {
                    Ok(h) => h,
                    Err(e) => {
                        refuse(stream, option, &path, &e).await?;
                        continue;
                    }
                };
                let replies = info_replies(option, &path, &request, handle.export().info());
                if let Err(e) = write_flush(stream, &replies).await {
                    handle.release().await;
                    return Err(e);
                }
                return Ok(Negotiated::Export(handle));
            }
            _ => {
                let msg = format!("option {option} is not supported by pstorage nbd-serve");
                reply_error(stream, option, REP_ERR_UNSUP, &msg).await?;
            }
        }
    }
    Err(NbdError::TooManyOptions(MAX_OPTIONS).into())
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
struct InfoRequest {
    name: Vec<u8>,
    infos: Vec<u16>,
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest> {
    let bad = |what: &'static str| Error::from(NbdError::MalformedInfo(what));
    if data.len() < 6 {
        return Err(bad("shorter than 6 bytes"));
    }
    let name_len = be32(data, 0) as usize;
    if name_len > data.len() - 6 {
        return Err(bad("name length runs past the option"));
    }
    let name = data[4..4 + name_len].to_vec();
    let rest = &data[4 + name_len..];
    let count = be16(rest, 0) as usize;
    if rest.len() != 2 + 2 * count {
        return Err(bad(
            "information request count does not match the option length",
        ));
    }
    let infos = rest[2..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, infos })
}

/// `NBD_REP_INFO` replies then `NBD_REP_ACK`.
fn info_replies(option: u32, path: &str, request: &InfoRequest, info: ExportInfo) -> Vec<u8> {
    let mut out = Vec::new();
    let mut export = Vec::with_capacity(12);
    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    export.extend_from_slice(&info.size_bytes.to_be_bytes());
    export.extend_from_slice(&info.flags.to_be_bytes());
    out.extend_from_slice(&option_reply(option, REP_INFO, &export));
    // Sent even when not asked for (the protocol allows it): clients that
    // understand it keep requests within 32 MiB, which we enforce.
    let mut block = Vec::with_capacity(14);
    block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    block.extend_from_slice(&1u32.to_be_bytes());
    block.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
    block.extend_from_slice(&MAX_PAYLOAD_BYTES.to_be_bytes());
    out.extend_from_slice(&option_reply(option, REP_INFO, &block));
    if request.infos.contains(&INFO_NAME) {
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&option_reply(option, REP_INFO, &name));
    }
    if request.infos.contains(&INFO_DESCRIPTION) {
        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
        d.extend_from_slice(format!("pstorage file {path}").as_bytes());
        out.extend_from_slice(&option_reply(option, REP_INFO, &d));
    }
    out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
    out
}

/// Answers INFO/GO for an export that cannot be served, and logs why.
async fn refuse<S>(stream: &mut S, option: u32, path: &str, e: &Error) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    tracing::warn!(export = path, error = %e, "export refused");
    let reply = match e.kind() {
        ErrorKind::InvalidArgument => REP_ERR_INVALID,
        // The export exists, but one writer at a time is the rule.
        ErrorKind::Busy => REP_ERR_POLICY,
        _ => REP_ERR_UNKNOWN,
    };
    reply_error(stream, option, reply, e.message()).await
}

async fn reply_error<S>(stream: &mut S, option: u32, reply: u32, message: &str) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    // Messages are protocol strings: at most 4096 bytes.
    let mut end = message.len().min(MAX_NAME_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    write_flush(
        stream,
        &option_reply(option, reply, &message.as_bytes()[..end]),
    )
    .await
}

async fn write_flush<S>(stream: &mut S, bytes: &[u8]) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_parse_and_reject_garbage() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"/ab");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"/ab");
        assert_eq!(r.infos, vec![INFO_BLOCK_SIZE, INFO_NAME]);
        assert!(parse_info_request(&d[..d.len() - 1]).is_err());
        assert!(parse_info_request(&[0, 0, 0, 9, 0, 0]).is_err());
        assert!(parse_info_request(&[0, 0]).is_err());
    }
}
