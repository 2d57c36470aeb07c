//! The `asyncgate.v1` gRPC contract: messages, client stubs and server traits
//! generated from `proto/asyncgate/v1/*.proto`, plus the standard
//! `google.longrunning` API (vendored from googleapis) that the gateway serves
//! over the same tickets.
//!
//! Every message implements `prost::Name` with a `type.googleapis.com/...`
//! type URL, so it packs into `prost_types::Any` with `Any::from_msg` and
//! unpacks with `Any::to_msg`.

/// Package `asyncgate.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("asyncgate.v1");
}

pub mod backoff;
pub mod json;
pub mod trace_context;

/// Package `asyncgate.bench.v1`: the benchmark's baseline echo service.
pub mod bench {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("asyncgate.bench.v1");
}

/// Package `google.longrunning`: `Operations` (client and server) and
/// `Operation`. Its `google.rpc.Status` is [`tonic_types::pb::Status`].
pub mod longrunning {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("google.longrunning");
}

/// The encoded `FileDescriptorSet` of every proto the gateway serves and
/// their imports (google.longrunning and google/api/* included), for
/// reflection; the benchmark's echo is left out.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("asyncgate_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_names_the_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<_> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        assert!(services.contains(&"Gateway".to_string()));
        assert!(services.contains(&"Workers".to_string()));
        assert!(services.contains(&"Operations".to_string()));
        assert!(
            !services.contains(&"Echo".to_string()),
            "the benchmark's echo is not served by the gateway: {services:?}"
        );
    }

    #[test]
    fn messages_pack_into_any_with_their_type_url() {
        let payload = super::v1::Payload {
            content_type: "text/plain".into(),
            ..Default::default()
        };
        let any = prost_types::Any::from_msg(&payload).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/asyncgate.v1.Payload");
        assert_eq!(any.to_msg::<super::v1::Payload>().unwrap(), payload);
    }
}
