//! Opening a connection's session: the Handshake (version 0, frozen) and Authenticate
//! exchanges, done before the reader and timer threads start.

use std::io;

use tracing::debug;

use crate::ClientConfig;
use crate::error::ClientError;
use crate::protocol::{
    ApiKey, FrameBuf, FrameDecoder, FrameEncoder, HandshakeRequest, HandshakeResponse,
    NegotiatedVersions, Request, Response, ServerMessage, supported_apis,
};
use crate::tls::{WireReader, WireWriter};

pub(super) enum HandshakeError {
    Io(io::Error),
    Client(ClientError),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// Sends the Handshake (version 0, frozen) and reads its answer, then Authenticate when the
/// config has credentials, all within `connect_timeout` (the socket's timeouts, set by the
/// caller).
pub(super) fn handshake(
    reader: &mut WireReader,
    writer: &mut WireWriter,
    decoder: &mut FrameDecoder,
    config: &ClientConfig,
) -> Result<HandshakeResponse, HandshakeError> {
    let request = Request::Handshake(HandshakeRequest {
        client_id: config.client_id.clone(),
        apis: supported_apis(),
    });
    let h = match exchange(reader, writer, decoder, config, &request, 0, "Handshake")? {
        Response::Handshake(h) => h,
        other => {
            return Err(HandshakeError::Client(ClientError::UnexpectedResponse {
                api: "Handshake",
                got: other.api_key().name(),
            }));
        }
    };
    if let Some(credentials) = &config.credentials {
        let versions = NegotiatedVersions::from_chosen(&h.apis);
        let version = versions
            .version(ApiKey::Authenticate)
            .map_err(|e| HandshakeError::Client(e.into()))?;
        let request = Request::Authenticate(credentials.request());
        match exchange(
            reader,
            writer,
            decoder,
            config,
            &request,
            version,
            "Authenticate",
        )? {
            Response::Authenticate(a) => debug!(principal = %a.principal, "authenticated"),
            other => {
                return Err(HandshakeError::Client(ClientError::UnexpectedResponse {
                    api: "Authenticate",
                    got: other.api_key().name(),
                }));
            }
        }
    }
    Ok(h)
}

/// Writes one request and reads its answer (nothing else may be in flight).
fn exchange(
    reader: &mut WireReader,
    writer: &mut WireWriter,
    decoder: &mut FrameDecoder,
    config: &ClientConfig,
    request: &Request,
    version: u16,
    api: &'static str,
) -> Result<Response, HandshakeError> {
    let mut buf = FrameBuf::new();
    FrameEncoder::default()
        .request(&mut buf, 0, version, request)
        .map_err(|e| HandshakeError::Client(e.into()))?;
    writer.write_all(&buf)?;
    let mut first = true;
    let frame = loop {
        if let Some(frame) = decoder
            .next_frame_owned()
            .map_err(|e| HandshakeError::Client(e.into()))?
        {
            break frame;
        }
        let n = reader.read(decoder.read_buf())?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        // A TLS server answers our plain frame with an alert record: say so plainly.
        if first
            && config.tls.is_none()
            && shardline_protocol::tls::looks_like_tls_alert(&decoder.read_buf()[..n])
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server answered with a TLS alert: it serves TLS (use a CA file, --tls-ca)",
            )
            .into());
        }
        first = false;
        decoder.filled(n);
    };
    let message =
        ServerMessage::decode_owned(&frame).map_err(|e| HandshakeError::Client(e.into()))?;
    match message {
        ServerMessage::Response { response, .. } => Ok(response),
        ServerMessage::Error { error, .. } => Err(HandshakeError::Client(ClientError::server(
            api,
            error.code,
            error.message,
        ))),
        other => Err(HandshakeError::Client(ClientError::UnexpectedResponse {
            api,
            got: message_name(&other),
        })),
    }
}

fn message_name(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Response { response, .. } => response.api_key().name(),
        ServerMessage::Error { .. } => "error",
        ServerMessage::Push(_) => "push",
        ServerMessage::PushError { .. } => "push error",
    }
}

pub(super) fn api_name(api_key: u16) -> &'static str {
    ApiKey::from_u16(api_key).map_or("unknown api", ApiKey::name)
}
