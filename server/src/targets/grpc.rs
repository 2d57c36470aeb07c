//! A unary gRPC method called with raw bytes: the ticket's binary payload is
//! the request message as encoded, the reply's bytes are the result. No
//! schema is needed, so any existing service can be a target unchanged.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Passes message bytes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One target method on one HTTP/2 channel (reused by every call).
#[derive(Clone)]
pub(crate) struct GrpcTarget {
    channel: Channel,
    path: tonic::codegen::http::uri::PathAndQuery,
}

impl GrpcTarget {
    /// A lazily connected channel to `origin` (`http://host:port`, or
    /// `https://` with the system roots) calling `path`
    /// (`/package.Service/Method`).
    pub(crate) fn new(origin: &str, path: &str) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(origin.to_owned())
            .map_err(|e| format!("{origin:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let endpoint = if origin.starts_with("https://") {
            endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| format!("{origin:?}: {e}"))?
        } else {
            endpoint
        };
        Ok(Self {
            channel: endpoint.connect_lazy(),
            path: path
                .parse()
                .map_err(|e| format!("{path:?} is not a method path: {e}"))?,
        })
    }

    /// Calls the method with `message` within `deadline` (sent as
    /// `grpc-timeout`), forwarding `metadata` as ASCII request metadata
    /// (entries that are not valid metadata are left out).
    pub(crate) async fn call(
        &self,
        message: Bytes,
        metadata: &std::collections::HashMap<String, String>,
        deadline: Option<Duration>,
    ) -> Result<Bytes, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("the target is unreachable: {e}")))?;
        let mut request = Request::new(message);
        for (key, value) in metadata {
            if let (Ok(key), Ok(value)) = (
                key.to_ascii_lowercase()
                    .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                value.parse(),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        let reply = grpc.unary(request, self.path.clone(), BytesCodec).await?;
        Ok(reply.into_inner())
    }
}
