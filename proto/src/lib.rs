//! The `asyncgate.v1` gRPC contract: messages, client stubs and server traits
//! generated from `proto/asyncgate/v1/*.proto`.

/// Package `asyncgate.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("asyncgate.v1");
}

/// Package `asyncgate.bench.v1`: the benchmark's baseline echo service.
pub mod bench {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("asyncgate.bench.v1");
}

/// The encoded `FileDescriptorSet` of every asyncgate proto, for reflection.
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
    }
}
