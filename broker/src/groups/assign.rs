//! Partition assignment: the "range" strategy.
//!
//! For each topic, the members subscribed to it are sorted by member id and the partitions
//! `0..n` are cut into contiguous runs: with `m` members, each gets `n / m` partitions and the
//! first `n % m` members one more. The same inputs always give the same assignment.

use std::collections::{BTreeMap, BTreeSet};

/// Topic → partitions of one member.
pub type Assignment = BTreeMap<String, Vec<u32>>;

/// Assigns the partitions of every subscribed topic. `subscriptions` maps member id → topics;
/// `partitions` gives a topic's partition count (0 for an unknown topic).
pub fn range(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: impl Fn(&str) -> u32,
) -> BTreeMap<String, Assignment> {
    let mut result: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    let topics: BTreeSet<&String> = subscriptions.values().flatten().collect();
    for topic in topics {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, t)| t.contains(topic))
            .map(|(m, _)| m)
            .collect();
        let n = partitions(topic);
        let m = members.len() as u32;
        let (per, extra) = (n / m, n % m);
        let mut next = 0;
        for (i, member) in members.into_iter().enumerate() {
            let count = per + u32::from((i as u32) < extra);
            if count > 0 {
                result
                    .entry(member.clone())
                    .or_default()
                    .insert(topic.clone(), (next..next + count).collect());
            }
            next += count;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        entries
            .iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn splits_into_contiguous_runs() {
        let a = range(&subs(&[("c", &["t"]), ("a", &["t"]), ("b", &["t"])]), |_| 8);
        assert_eq!(a["a"]["t"], vec![0, 1, 2]);
        assert_eq!(a["b"]["t"], vec![3, 4, 5]);
        assert_eq!(a["c"]["t"], vec![6, 7]);
    }

    #[test]
    fn every_partition_exactly_once_whatever_the_shape() {
        for members in 1..6 {
            for n in 0..20 {
                let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
                let s: BTreeMap<String, BTreeSet<String>> = names
                    .iter()
                    .map(|m| (m.clone(), ["t".to_string(), "u".to_string()].into()))
                    .collect();
                let a = range(&s, |t| if t == "t" { n } else { 3 });
                for (topic, count) in [("t", n), ("u", 3)] {
                    let mut all: Vec<u32> = a
                        .values()
                        .filter_map(|x| x.get(topic))
                        .flatten()
                        .copied()
                        .collect();
                    all.sort();
                    assert_eq!(
                        all,
                        (0..count).collect::<Vec<_>>(),
                        "{members} members, {n} partitions"
                    );
                }
            }
        }
    }

    #[test]
    fn only_subscribers_get_a_topic() {
        let a = range(&subs(&[("a", &["t"]), ("b", &["u"])]), |_| 2);
        assert_eq!(a["a"].keys().collect::<Vec<_>>(), vec!["t"]);
        assert_eq!(a["b"]["u"], vec![0, 1]);
        assert!(range(&subs(&[("a", &["gone"])]), |_| 0)["a"].is_empty());
    }
}
