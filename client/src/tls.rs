//! TLS for `https://` gateways: which CA to trust, and the certificate a
//! client or worker presents to a gateway that requires one (mutual TLS).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// TLS settings. The default trusts the system's root certificates and
/// presents no client certificate.
#[derive(Clone, Default)]
pub struct Tls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl Tls {
    /// Trusts this CA (PEM) instead of the system roots: for gateways with
    /// a private certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this certificate and key (PEM) to the gateway.
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Checks the gateway's certificate against this name instead of the
    /// URL's host.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads the CA and the client certificate and key from PEM files (the
    /// CLI's `--ca-cert`, `--client-cert`, `--client-key`).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Tls, ClientError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                ClientError::InvalidConfig(format!("cannot read {}: {e}", path.display()))
            })
        };
        let mut tls = Tls::default();
        if let Some(ca) = ca {
            tls = tls.ca_pem(read(ca)?);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => tls = tls.client_identity(read(cert)?, read(key)?),
            (None, None) => {}
            _ => {
                return Err(ClientError::InvalidConfig(
                    "a client certificate needs both its certificate and its key".into(),
                ));
            }
        }
        Ok(tls)
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}
