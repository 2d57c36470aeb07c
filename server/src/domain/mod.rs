//! Pure domain types: no tonic, no I/O. Everything here is validated data that
//! the engine and dispatcher can trust.

pub mod backoff;
pub mod callback;
pub mod ids;
pub mod queue;
pub mod ticket;

pub use ids::{LeaseId, SessionId, TicketId};
pub use queue::{QueueLimits, QueueName, QueuePause, QueueTarget};
pub use ticket::{Chunk, Lease, NewTicket, Outcome, Progress, Ticket, TicketError, TicketState};
