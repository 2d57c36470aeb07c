//! Request validation: any bytes decoded as a SubmitRequest (or a worker's
//! message) are either refused with an error or accepted — never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

use asyncgate_proto::v1 as pb;
use asyncgate_server::rpc::convert;

fuzz_target!(|data: &[u8]| {
    let limits = convert::SubmitLimits {
        max_payload_bytes: 64 * 1024,
        default_max_attempts: 3,
        max_attempts_limit: 100,
    };
    if let Ok(request) = pb::SubmitRequest::decode(data) {
        let _ = convert::new_ticket(
            &asyncgate_server::auth::Caller::anonymous(),
            request,
            &limits,
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = convert::ticket_id(text, "id");
        let _ = asyncgate_server::domain::QueueName::parse(text);
    }
    let _ = pb::WorkerMessage::decode(data);
});
