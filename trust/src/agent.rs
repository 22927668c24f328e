//! What agents vouch for: each stored chunk's agent signature (over the batch's content hash and
//! the previous batch's link hash, docs/protocol.md "Batch signatures"), and each agent's chain of
//! batches across recordings (docs/store.md, "Agent signatures and chains").
//!
//! [`check_chunk`] checks one chunk: that its decrypted body is the content the agent signed,
//! that the signature verifies with the stored certificate, that the certificate is the host's,
//! and that the events are those its header describes. [`AgentChains`] gathers the links of every
//! chunk of a store (and of the batches tombstones record as removed) and names each break: a
//! batch whose previous batch is not there, with the sequence numbers between.
//!
//! Pure, given the certificates: the store finds the files.
use std::collections::{BTreeMap, HashMap};

use custos_pki::batch_signature::{self, AgentCertificates};
use custos_proto::{
    api::AgentChainResult,
    wire::{self, BatchHash, BatchHeader, BatchSeq, SpoolId},
};

use crate::{chain::ChainChunk, chunk::ChunkHeader};

/// Checks the agent's signature on a chunk that passed the chain reader; one line per problem,
/// each naming the chunk. A chunk read without the store key (no plaintext) is checked for all
/// but its content: the certificate and the signature over the claimed hashes. `certificate` is the stored certificate the chunk names; `trust`, when
/// given, checks it against the deployment CA as of the batch's arrival (otherwise only its name
/// is compared with the host). An unsigned chunk has nothing to check.
pub fn check_chunk(
    chunk: &ChainChunk,
    certificate: Result<&[u8], String>,
    trust: Option<&AgentCertificates>,
) -> Vec<String> {
    let header = &chunk.raw.header;
    let (Some(signed), Some(link)) = (&header.signed, header.link()) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut problem = |what: String| {
        problems.push(format!(
            "chunk {}: batch {} of spool {} from {}: {what}",
            header.index, link.seq, link.spool, header.recording.host
        ))
    };
    if let Some(plaintext) = &chunk.plaintext
        && BatchHash::of_content(plaintext) != signed.content
    {
        problem(
            "its events are not what the agent signed (their hash differs from the signed \
             content hash): altered"
                .into(),
        );
    }
    match certificate {
        Err(err) => problem(err),
        Ok(certificate) => {
            let name = match trust {
                Some(trust) => {
                    let at = header.received.unwrap_or(header.last_time).0;
                    trust.check(certificate, at).map(|identity| identity.name)
                }
                None => custos_pki::identity_of(certificate)
                    .map(|identity| identity.name)
                    .map_err(|err| err.to_string()),
            };
            match name {
                Err(err) => problem(format!("its agent certificate is {err}")),
                Ok(name) if name != header.recording.host => problem(format!(
                    "signed with the certificate of {name}, not of {}",
                    header.recording.host
                )),
                Ok(_) => {}
            }
            if batch_signature::verify(certificate, &link.message(), &signed.signature).is_err() {
                problem(
                    "the agent's signature does not verify (the stored hashes or numbers were \
                     altered)"
                        .into(),
                );
            }
        }
    }
    // The events signed must be this chunk's as its header describes them: of its recording,
    // as many, numbered as it says.
    let described = BatchHeader {
        spool: header.batch.spool.clone(),
        seq: header.batch.seq,
        host: header.recording.host.clone(),
        boot_id: header.recording.boot_id.clone(),
        session: header.recording.session,
        first_seq: header.first_seq,
        last_seq: header.last_seq,
        events: header.events,
        first_time: header.first_time,
        last_time: header.last_time,
        raw_len: header.raw_len,
        signed: None,
    };
    match chunk.events() {
        // Read without the store key: the content is not checked.
        Err(_) if chunk.plaintext.is_none() => {}
        Ok(events) => {
            if let Err(err) = wire::check_batch(&described, &events) {
                problem(format!("its events do not match its header: {err}"));
            }
        }
        Err(err) => problem(err.kind.to_string()),
    }
    problems
}

/// One batch of an agent's spool as found in the store.
#[derive(Clone, Debug)]
struct Link {
    seq: BatchSeq,
    /// Its link hash and the one it names as previous; `None` for an unsigned batch.
    signed: Option<(BatchHash, BatchHash)>,
    /// Where it is (`recording <id> chunk <n>`), or the tombstone that records its removal.
    at: String,
    removed: bool,
}

/// The links of every agent's spools, gathered from a store's chunks and tombstones, then
/// checked ([`AgentChains::check`]).
#[derive(Default)]
pub struct AgentChains {
    links: BTreeMap<(String, SpoolId), Vec<Link>>,
    /// Problems of no one chain (a tombstone that does not verify).
    other: Vec<String>,
    /// Batches found but not counted as links: their chunk does not verify.
    rejected: BTreeMap<(String, SpoolId), Vec<String>>,
}

impl AgentChains {
    /// Adds the batch a chunk stores (its agent is its recording's host).
    pub fn add_chunk(&mut self, header: &ChunkHeader) {
        let signed = header.link().map(|link| (link.hash(), link.prev));
        self.links
            .entry((header.recording.host.clone(), header.batch.spool.clone()))
            .or_default()
            .push(Link {
                seq: header.batch.seq,
                signed,
                at: format!("recording {} chunk {}", header.recording.id(), header.index),
                removed: false,
            });
    }

    /// Adds a batch a tombstone records as removed with its recording.
    pub fn add_removed(
        &mut self,
        agent: &str,
        spool: &SpoolId,
        seq: BatchSeq,
        signed: Option<(BatchHash, BatchHash)>,
        tombstone: &str,
    ) {
        self.links
            .entry((agent.to_owned(), spool.clone()))
            .or_default()
            .push(Link {
                seq,
                signed,
                at: format!("tombstone {tombstone}"),
                removed: true,
            });
    }

    /// A chunk of the agent's spool whose signature or content does not verify: not a link of
    /// its chain (a break shows where it was), and a problem of that chain.
    pub fn add_unverified(&mut self, header: &ChunkHeader, problems: &[String]) {
        self.rejected
            .entry((header.recording.host.clone(), header.batch.spool.clone()))
            .or_default()
            .push(format!(
                "seq {} (recording {} chunk {}) is not counted: {}",
                header.batch.seq,
                header.recording.id(),
                header.index,
                problems.join("; ")
            ));
    }

    /// A problem found on the way that no one chain owns (reported as its own result).
    pub fn add_problem(&mut self, problem: String) {
        self.other.push(problem);
    }

    /// Checks each agent's spool: every signed batch names the signed batch before it (in
    /// sequence order) as its previous, the first names none (or what a tombstone removed), no
    /// sequence number is stored twice, and no unsigned batch follows a signed one.
    pub fn check(mut self) -> Vec<AgentChainResult> {
        for key in self.rejected.keys() {
            self.links.entry(key.clone()).or_default();
        }
        let other = (!self.other.is_empty()).then(|| AgentChainResult {
            agent: "(tombstones)".into(),
            spool: String::new(),
            ok: false,
            batches: 0,
            removed: 0,
            problems: self.other,
        });
        self.links
            .into_iter()
            .map(|((agent, spool), mut links)| {
                links.sort_by_key(|link| link.seq);
                let mut problems = self
                    .rejected
                    .remove(&(agent.clone(), spool.clone()))
                    .unwrap_or_default();
                problems.extend(chain_problems(&links));
                AgentChainResult {
                    ok: problems.is_empty(),
                    batches: links.iter().filter(|l| !l.removed).count() as u64,
                    removed: links.iter().filter(|l| l.removed).count() as u64,
                    agent,
                    spool: spool.0,
                    problems,
                }
            })
            .chain(other)
            .collect()
    }
}

fn chain_problems(links: &[Link]) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in links.windows(2) {
        if pair[0].seq == pair[1].seq {
            problems.push(format!(
                "seq {} is stored twice ({} and {})",
                pair[0].seq, pair[0].at, pair[1].at
            ));
        }
    }
    let by_hash: HashMap<BatchHash, &Link> = links
        .iter()
        .filter_map(|link| Some((link.signed?.0, link)))
        .collect();
    let mut before: Option<(&Link, BatchHash)> = None;
    for link in links {
        let Some((hash, prev)) = link.signed else {
            if let Some((signed, _)) = before {
                problems.push(format!(
                    "seq {} ({}) is not signed, but the agent signed its batches since seq {} \
                     (a batch replaced)",
                    link.seq, link.at, signed.seq
                ));
            }
            continue;
        };
        match before {
            None if !prev.is_zero() => problems.push(format!(
                "batches before seq {} are missing: it ({}) names a previous batch that is not \
                 stored",
                link.seq, link.at
            )),
            None => {}
            Some((last, last_hash)) if prev != last_hash => {
                if prev.is_zero() {
                    problems.push(format!(
                        "seq {} ({}) starts a new chain after seq {}: the agent lost its chain \
                         (its spool state reset)",
                        link.seq, link.at, last.seq
                    ));
                } else if let Some(named) = by_hash.get(&prev) {
                    problems.push(format!(
                        "seq {} ({}) names seq {} as its previous, but seq {} lies between \
                         (moved or inserted)",
                        link.seq, link.at, named.seq, last.seq
                    ));
                } else {
                    problems.push(format!(
                        "batches after seq {} and before seq {} are missing: seq {} ({}) names a \
                         previous batch that is not stored",
                        last.seq, link.seq, link.seq, link.at
                    ));
                }
            }
            Some(_) => {}
        }
        before = Some((link, hash));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(chain: &[(u64, bool)]) -> Vec<Link> {
        // (seq, signed): each signed batch names the previous signed one.
        let mut prev = BatchHash::default();
        chain
            .iter()
            .map(|&(seq, signed)| {
                let spool = SpoolId("s".into());
                let link = wire::BatchLink {
                    spool: &spool,
                    seq: BatchSeq(seq),
                    content: BatchHash([seq as u8; 32]),
                    prev,
                };
                let hashes = signed.then(|| (link.hash(), prev));
                if signed {
                    prev = link.hash();
                }
                Link {
                    seq: BatchSeq(seq),
                    signed: hashes,
                    at: format!("chunk {seq}"),
                    removed: false,
                }
            })
            .collect()
    }

    #[test]
    fn an_unbroken_chain_passes_and_each_removal_is_named_with_its_range() {
        let whole = links(&[(1, true), (2, true), (5, true), (6, true)]);
        assert_eq!(chain_problems(&whole), Vec::<String>::new());
        // Numbers may skip (an agent restart reserves a new block): the hashes decide.
        let mut middle = whole.clone();
        middle.remove(2);
        assert_eq!(
            chain_problems(&middle),
            vec![
                "batches after seq 2 and before seq 6 are missing: seq 6 (chunk 6) names a \
                 previous batch that is not stored"
            ]
        );
        let head = whole[1..].to_vec();
        assert_eq!(
            chain_problems(&head),
            vec![
                "batches before seq 2 are missing: it (chunk 2) names a previous batch that is \
                 not stored"
            ]
        );
        // Agents that signed only since an upgrade: unsigned first, then a chain from zero.
        let upgraded = links(&[(1, false), (2, false), (3, true), (4, true)]);
        assert_eq!(chain_problems(&upgraded), Vec::<String>::new());
        let mut downgraded = upgraded.clone();
        downgraded[3].signed = None;
        assert_eq!(
            chain_problems(&downgraded),
            vec![
                "seq 4 (chunk 4) is not signed, but the agent signed its batches since seq 3 (a \
                 batch replaced)"
            ]
        );
        let mut twice = whole.clone();
        twice.insert(1, whole[1].clone());
        assert!(chain_problems(&twice)[0].starts_with("seq 2 is stored twice"));
    }
}
