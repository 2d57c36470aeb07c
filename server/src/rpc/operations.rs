//! `google.longrunning.Operations`: the standard long-running operations API
//! over tickets, so that generic LRO clients and tools work unchanged.
//!
//! Operation `operations/{ticket id}` is ticket `{ticket id}` (see
//! `convert::operation` for the mapping). Everything goes through the same
//! core as `asyncgate.v1.Gateway`: the same tenant visibility (another
//! tenant's operation is NOT_FOUND, like one that does not exist), the same
//! paging, cancel and long-poll, and the same error mapping.

use std::time::Duration;

use tonic::{Request, Response, Status};

use asyncgate_proto::longrunning as lro;
use lro::operations_server::Operations;

use super::convert::PageQuery;
use super::tickets::CancelBy;
use super::{Core, convert};
use crate::auth::{self, Caller};
use crate::error::GatewayError;

/// How much sooner than the caller's own deadline (`grpc-timeout`) a wait
/// ends, at least, so that the caller receives the not-done operation rather
/// than DEADLINE_EXCEEDED; a tenth of the deadline when that is more.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// The tonic service, as registered with the server and the health service.
pub(crate) type Server = lro::operations_server::OperationsServer<OperationsService>;

/// The service over `core`, ready to add to the router. Requests are small
/// (a name, a filter) and replies carry at most one result payload, which the
/// default size limits allow.
pub(crate) fn server(core: Core) -> Server {
    use tonic::codec::CompressionEncoding::{Gzip, Zstd};
    // Compression as on the Gateway service.
    Server::new(OperationsService::new(core))
        .accept_compressed(Gzip)
        .accept_compressed(Zstd)
        .send_compressed(Gzip)
        .send_compressed(Zstd)
}

/// The service implementation.
pub(crate) struct OperationsService {
    core: Core,
}

impl OperationsService {
    /// A service over `core`.
    pub(crate) fn new(core: Core) -> Self {
        Self { core }
    }

    async fn present(&self, viewer: &Caller, ticket: &crate::domain::Ticket) -> lro::Operation {
        convert::operation(self.core.present(viewer, ticket).await)
    }
}

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`,
/// unit one of H M S m u n), if it sent one.
fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Operations for OperationsService {
    #[tracing::instrument(name = "list_operations", skip_all, fields(filter = %request.get_ref().filter))]
    async fn list_operations(
        &self,
        request: Request<lro::ListOperationsRequest>,
    ) -> Result<Response<lro::ListOperationsResponse>, Status> {
        let caller = auth::caller(&request);
        let request = request.into_inner();
        if !request.name.is_empty() && request.name != convert::OPERATIONS {
            return Err(GatewayError::invalid(
                "name",
                format!(
                    "{:?} is not a collection here; use \"{}\" (or leave it empty)",
                    request.name.chars().take(80).collect::<String>(),
                    convert::OPERATIONS
                ),
            )
            .into());
        }
        let filter = convert::operations_filter(&caller, &request.filter)?;
        let page_size = u32::try_from(request.page_size).map_err(|_| {
            GatewayError::invalid("page_size", "must not be negative; 0 means the default")
        })?;
        let (page_size, after) =
            convert::page(page_size, &request.page_token, false, "ListOperations")?;
        let states = match filter.states {
            // Contradicting terms: nothing can match.
            Some(states) if states.is_empty() => {
                return Ok(Response::new(lro::ListOperationsResponse::default()));
            }
            states => states.unwrap_or_default(),
        };
        let page = self
            .core
            .list_visible(
                &caller,
                PageQuery {
                    queue: filter.queue,
                    states,
                    page_size,
                    after,
                    ..PageQuery::default()
                },
            )
            .await?;
        Ok(Response::new(lro::ListOperationsResponse {
            operations: page.tickets.into_iter().map(convert::operation).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(name = "get_operation", skip_all, fields(name = %request.get_ref().name))]
    async fn get_operation(
        &self,
        request: Request<lro::GetOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let caller = auth::caller(&request);
        let id = convert::operation_id(&request.get_ref().name, "name")?;
        let ticket = self.core.visible(&caller, id).await?;
        Ok(Response::new(self.present(&caller, &ticket).await))
    }

    /// Not offered: the engine has no delete. Finished tickets are forgotten
    /// on their own after the result retention; CancelOperation stops one.
    #[tracing::instrument(name = "delete_operation", skip_all)]
    async fn delete_operation(
        &self,
        _request: Request<lro::DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let retention = self.core.config.engine.result_retention;
        Err(GatewayError::Unimplemented(format!(
            "DeleteOperation is not supported: the gateway forgets a finished operation by \
             itself once its result retention has passed (--result-retention, {} here); to \
             stop one that is still running, use CancelOperation",
            humantime::format_duration(retention)
        ))
        .into())
    }

    #[tracing::instrument(name = "cancel_operation", skip_all, fields(name = %request.get_ref().name))]
    async fn cancel_operation(
        &self,
        request: Request<lro::CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let id = convert::operation_id(&request.get_ref().name, "name")?;
        let by = CancelBy {
            action: "cancel_operation",
            peer,
            reason: "via CancelOperation",
        };
        self.core.cancel_visible(&caller, id, by).await?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(name = "wait_operation", skip_all, fields(name = %request.get_ref().name))]
    async fn wait_operation(
        &self,
        request: Request<lro::WaitOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let caller = auth::caller(&request);
        let deadline = caller_deadline(request.metadata());
        let request = request.into_inner();
        let id = convert::operation_id(&request.name, "name")?;
        // Unset: as long as the server allows. Always capped by the server's
        // max wait, and ended just before the caller's own deadline.
        let max_wait = self.core.config.max_wait;
        let mut wait = convert::duration(request.timeout, "timeout", Duration::MAX)?
            .unwrap_or(max_wait)
            .min(max_wait);
        if let Some(deadline) = deadline {
            wait = wait.min(deadline.saturating_sub(DEADLINE_MARGIN.max(deadline / 10)));
        }
        let ticket = self.core.wait_visible(&caller, id, wait).await?;
        Ok(Response::new(self.present(&caller, &ticket).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_deadline_reads_grpc_timeout() {
        let deadline = |value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            caller_deadline(&metadata)
        };
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(deadline("3M"), Some(Duration::from_secs(180)));
        assert_eq!(deadline("S"), None);
        assert_eq!(deadline("123456789S"), None);
        assert_eq!(deadline("5x"), None);
        assert_eq!(caller_deadline(&tonic::metadata::MetadataMap::new()), None);
    }
}
