//! Checked peer messages waiting for the consensus core, one queue per peer, taken in turn.
//!
//! The check stage hands messages over in one FIFO channel, and the core sets messages aside
//! while it writes its log. Taken in arrival order, a peer flooding the core would put thousands
//! of its messages in front of every honest one. Here each peer waits behind its own messages
//! only: an honest message is taken within one turn of the peers, and a peer over its share
//! loses its own oldest (consensus recovers lost messages by timeouts and sync, as it does lost
//! packets).

use std::collections::{BTreeMap, VecDeque};

use crate::stages::Checked;

/// Messages one peer may have waiting.
pub const PER_PEER: usize = 1024;

#[derive(Default)]
pub struct Backlog {
    queues: BTreeMap<usize, VecDeque<Checked>>,
    /// The peer whose turn comes next (or the first after it with anything waiting).
    turn: usize,
    len: usize,
    /// Messages dropped because their peer was over its share.
    pub dropped: u64,
}

fn sender(c: &Checked) -> usize {
    match c {
        Checked::Message { from, .. } | Checked::Refused { from } => *from,
    }
}

impl Backlog {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `c` behind its peer's earlier messages; a peer over its share loses its oldest.
    pub fn push(&mut self, c: Checked) {
        let from = sender(&c);
        let q = self.queues.entry(from).or_default();
        if q.len() >= PER_PEER {
            q.pop_front();
            self.len -= 1;
            self.dropped += 1;
            tracing::debug!(peer = from, "consensus: peer over its share of the backlog; dropped its oldest message");
        }
        q.push_back(c);
        self.len += 1;
    }

    /// The oldest message of the next peer in turn.
    pub fn pop(&mut self) -> Option<Checked> {
        if self.len == 0 {
            return None;
        }
        let from = self
            .queues
            .range(self.turn..)
            .chain(self.queues.range(..self.turn))
            .find(|(_, q)| !q.is_empty())
            .map(|(&from, _)| from)?;
        let c = self.queues.get_mut(&from)?.pop_front()?;
        self.len -= 1;
        self.turn = from + 1;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::peer_message::Kind;
    use bftcd_proto::bftcd::{PeerMessage, ReadIndexRequest};

    fn msg(from: usize, tag: u64) -> Checked {
        let kind = Some(Kind::ReadIndexRequest(ReadIndexRequest { round: tag }));
        Checked::Message { from, msg: PeerMessage { kind } }
    }

    fn who(c: &Checked) -> (usize, u64) {
        match c {
            Checked::Message { from, msg: PeerMessage { kind: Some(Kind::ReadIndexRequest(r)) } } => (*from, r.round),
            Checked::Message { from, .. } => (*from, 0),
            Checked::Refused { from } => (*from, u64::MAX),
        }
    }

    #[test]
    fn a_flooding_peer_waits_behind_its_own_messages_only() {
        let mut b = Backlog::default();
        for i in 0..3000 {
            b.push(msg(3, i));
        }
        b.push(msg(1, 0));
        b.push(Checked::Refused { from: 2 });
        b.push(msg(1, 1));
        assert_eq!(b.len(), PER_PEER + 3);
        assert_eq!(b.dropped, 3000 - PER_PEER as u64);
        // Peer 3's oldest kept message is the first of its last PER_PEER.
        let first = 3000 - PER_PEER as u64;
        let order: Vec<_> = std::iter::from_fn(|| b.pop()).take(6).map(|c| who(&c)).collect();
        assert_eq!(order, vec![(1, 0), (2, u64::MAX), (3, first), (1, 1), (3, first + 1), (3, first + 2)]);
        assert_eq!(b.len(), PER_PEER - 3);
        while b.pop().is_some() {}
        assert!(b.is_empty());
        assert_eq!(b.pop().map(|c| who(&c)), None);
    }
}
