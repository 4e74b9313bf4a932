//! How raft messages leave a member. The core hands every outgoing batch to a [`Transport`];
//! messages coming in go to [`super::RaftNode::step`].

use raft::prelude::Message;

/// Delivery of raft messages to other members.
///
/// Contract:
/// - `send` never blocks the raft core: it queues and returns. It may drop messages (a full
///   queue, a peer that is down); raft-rs retries whatever matters (appends are re-sent after
///   a probe, votes at the next election), so a drop costs latency, never safety.
/// - When a message to a member cannot be delivered, the transport calls
///   [`super::RaftNode::report_unreachable`] for it; for a `MsgSnapshot` it calls
///   [`super::RaftNode::report_snapshot`] with the outcome.
/// - Messages to one member are delivered in the order given (raft-rs tolerates reordering
///   and loss, but in-order delivery keeps appends streaming).
pub trait Transport: Send + 'static {
    fn send(&self, msgs: Vec<Message>);
}

/// The transport of a single-member cluster: there is nobody to talk to. A message for
/// another member is a broken invariant of the caller's configuration and is logged.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(to = m.to, kind = ?m.get_msg_type(), "no transport: raft message dropped");
        }
    }
}
