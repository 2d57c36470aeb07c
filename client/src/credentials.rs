//! API keys: the `authorization: Bearer <key>` metadata every call of a
//! client or worker carries once a key is set.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::ClientError;

/// The transport of clients and workers: a channel whose calls carry the
/// credentials.
pub type Transport = InterceptedService<Channel, Credentials>;

/// An API key to present, or none.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.bearer.is_some() { "set" } else { "none" };
        f.debug_struct("Credentials")
            .field("api_key", &key)
            .finish()
    }
}

impl Credentials {
    /// Presents `key` as `authorization: Bearer <key>`.
    pub fn api_key(key: &str) -> Result<Credentials, ClientError> {
        let value = format!("Bearer {}", key.trim())
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| {
                ClientError::InvalidConfig(
                    "the API key must be printable ASCII without line breaks".into(),
                )
            })?;
        Ok(Credentials {
            bearer: Some(value),
        })
    }
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}
