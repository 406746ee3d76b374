//! The consumer group as the broker sees it: which member holds which
//! partition of the sink's topics, and which partitions nobody consumes.
//!
//! Guarantee: a [`GroupView`] is built only from what the broker answered
//! (DescribeGroups and a fresh Metadata request), never from this
//! process's own belief about its assignment, so it also shows the case
//! the sink cannot see from inside: a group whose members hold nothing
//! while the topic has partitions. Read by the sink (which reports such
//! partitions), by `run` while it waits for the archive, and by `check`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;

/// One member of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The broker's member id.
    pub member_id: String,
    /// The client's `client.id`.
    pub client_id: String,
    /// The host the member connected from.
    pub host: String,
    /// `(topic, partition)` the group leader assigned to it.
    pub assigned: Vec<(String, i32)>,
}

/// A consumer group and the partitions of some topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The group id.
    pub group: String,
    /// The coordinator's state of the group: `Stable`, `Empty`,
    /// `PreparingRebalance`, `CompletingRebalance`, `Dead`.
    pub state: String,
    /// Its members.
    pub members: Vec<Member>,
    /// Partition count of each topic asked about (0: the topic does not
    /// exist).
    pub partitions: BTreeMap<String, i32>,
}

impl GroupView {
    /// The member that holds `partition` of `topic`.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<&Member> {
        self.members.iter().find(|m| {
            m.assigned
                .iter()
                .any(|(t, p)| t == topic && *p == partition)
        })
    }

    /// Partitions of the topics that no member holds.
    pub fn unassigned(&self) -> Vec<(String, i32)> {
        let held: BTreeSet<(&str, i32)> = self
            .members
            .iter()
            .flat_map(|m| m.assigned.iter().map(|(t, p)| (t.as_str(), *p)))
            .collect();
        self.partitions
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .filter(|(t, p)| !held.contains(&(t.as_str(), *p)))
            .collect()
    }

    /// Whether the group is between rebalances: only then is an unheld
    /// partition a problem rather than a moment of a reassignment.
    pub fn settled(&self) -> bool {
        matches!(self.state.as_str(), "Stable" | "Empty" | "Dead")
    }

    /// One line for logs and `check`: members, and what nobody holds.
    pub fn summary(&self) -> String {
        let unassigned = self.unassigned();
        let mut s = format!(
            "group {} ({}): {} member(s)",
            self.group,
            self.state,
            self.members.len()
        );
        for (topic, n) in &self.partitions {
            s.push_str(&format!("; topic {topic}: {n} partition(s)"));
        }
        if !unassigned.is_empty() {
            s.push_str(&format!(
                "; consumed by no member: {}",
                list_partitions(&unassigned)
            ));
        }
        s
    }
}

/// `t/0, t/2` for logs.
pub fn list_partitions(parts: &[(String, i32)]) -> String {
    parts
        .iter()
        .map(|(t, p)| format!("{t}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A client configuration for one-off questions to the broker (metadata,
/// groups, watermarks): the sink's extra `kafka` settings (TLS, SASL),
/// then its bootstrap servers.
pub fn client_config(brokers: &str, kafka: &BTreeMap<String, String>) -> rdkafka::ClientConfig {
    let mut cc = rdkafka::ClientConfig::new();
    for (k, v) in kafka {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", brokers);
    cc
}

/// Asks the broker about `group` and the partition counts of `topics`
/// (blocking: call it from `spawn_blocking`).
pub fn describe<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<GroupView, KafkaError> {
    let mut partitions = BTreeMap::new();
    for topic in topics {
        let md = client.fetch_metadata(Some(topic), timeout)?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        partitions.insert(topic.clone(), i32::try_from(n).unwrap_or(i32::MAX));
    }
    let list = client.fetch_group_list(Some(group), timeout)?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupView {
            group: group.to_owned(),
            state: "Dead".into(),
            members: Vec::new(),
            partitions,
        });
    };
    let members = info
        .members()
        .iter()
        .map(|m| Member {
            member_id: m.id().to_owned(),
            client_id: m.client_id().to_owned(),
            host: m.client_host().to_owned(),
            assigned: m
                .assignment()
                .map(parse_assignment)
                .unwrap_or_default()
                .into_iter()
                .filter(|(t, _)| partitions.contains_key(t))
                .collect(),
        })
        .collect();
    Ok(GroupView {
        group: group.to_owned(),
        state: info.state().to_owned(),
        members,
        partitions,
    })
}

/// Decodes the consumer protocol's `Assignment` (any version: int16
/// version, then an array of topic name + int32 partitions; user data and
/// later fields are not needed). Malformed bytes decode as far as they go.
pub fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    let parsed = (|| {
        r.i16()?;
        let topics = r.i32()?;
        for _ in 0..topics.max(0) {
            let len = usize::try_from(r.i16()?).ok()?;
            let name = String::from_utf8(r.take(len)?.to_vec()).ok()?;
            let n = r.i32()?;
            for _ in 0..n.max(0) {
                out.push((name.clone(), r.i32()?));
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::debug!(
            len = bytes.len(),
            "a group member's assignment did not decode completely"
        );
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a consumer-protocol Assignment, written field by field
    /// as the protocol specifies (version, [topic, [partition]], user data).
    fn assignment(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        b
    }

    #[test]
    fn assignments_decode() {
        let b = assignment(1, &[("payments", &[0, 2]), ("other", &[5])]);
        assert_eq!(
            parse_assignment(&b),
            vec![
                ("payments".to_owned(), 0),
                ("payments".to_owned(), 2),
                ("other".to_owned(), 5)
            ]
        );
        assert_eq!(parse_assignment(&assignment(0, &[])), vec![]);
        // Truncated: what decoded so far, no panic.
        assert_eq!(parse_assignment(&b[..24]), vec![("payments".to_owned(), 0)]);
        assert_eq!(parse_assignment(&[]), vec![]);
    }

    #[test]
    fn unassigned_partitions_are_the_ones_no_member_holds() {
        let view = GroupView {
            group: "g".into(),
            state: "Stable".into(),
            members: vec![
                Member {
                    member_id: "a".into(),
                    client_id: "c".into(),
                    host: "/127.0.0.1".into(),
                    assigned: vec![("t".into(), 0)],
                },
                Member {
                    member_id: "b".into(),
                    client_id: "c".into(),
                    host: "/127.0.0.1".into(),
                    assigned: vec![],
                },
            ],
            partitions: BTreeMap::from([("t".to_owned(), 3)]),
        };
        assert_eq!(
            view.unassigned(),
            vec![("t".to_owned(), 1), ("t".to_owned(), 2)]
        );
        assert_eq!(view.owner("t", 0).map(|m| m.member_id.as_str()), Some("a"));
        assert!(view.owner("t", 1).is_none());
        assert!(view.settled());
        assert!(view.summary().contains("consumed by no member: t/1, t/2"));
    }
}
