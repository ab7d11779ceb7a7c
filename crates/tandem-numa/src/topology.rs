//! The machine's NUMA nodes and their CPUs, read from
//! `/sys/devices/system/node`, and the node layout the engine runs with
//! ([`NumaMode`] → [`Layout`]).
//!
//! Only CPUs this process may run on (its affinity mask, e.g. under
//! `taskset` or a cgroup) are counted; nodes left without CPUs (memory-only
//! nodes such as CXL expanders) are skipped. Machines without sysfs NUMA
//! information are one node.

use std::path::Path;
use std::str::FromStr;

use crate::cpuset::{current_affinity, parse_cpulist};
use crate::NumaError;

/// A NUMA node of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The kernel's node number (what `mbind` takes).
    pub id: usize,
    /// Usable CPUs, sorted.
    pub cpus: Vec<usize>,
}

/// The machine's nodes that have usable CPUs, in node order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub nodes: Vec<Node>,
}

impl Topology {
    /// Reads the running machine's topology (never fails: falls back to one
    /// node holding every usable CPU).
    pub fn detect() -> Topology {
        let allowed = current_affinity();
        match Topology::from_sysfs(Path::new("/sys/devices/system/node"), allowed.as_deref()) {
            Ok(t) if !t.nodes.is_empty() => t,
            _ => Topology::single_node(allowed),
        }
    }

    fn single_node(allowed: Option<Vec<usize>>) -> Topology {
        let cpus = allowed.unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        });
        Topology {
            nodes: vec![Node { id: 0, cpus }],
        }
    }

    /// Reads `root/node*/cpulist`, keeping only CPUs in `allowed` (all when
    /// None). Nodes are sorted by id; nodes without usable CPUs are dropped.
    pub fn from_sysfs(root: &Path, allowed: Option<&[usize]>) -> Result<Topology, NumaError> {
        let io = |e: std::io::Error| NumaError::Sysfs {
            path: root.display().to_string(),
            source: e,
        };
        let mut nodes = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let path = entry.path().join("cpulist");
            let text = std::fs::read_to_string(&path).map_err(|e| NumaError::Sysfs {
                path: path.display().to_string(),
                source: e,
            })?;
            let mut cpus = parse_cpulist(&text)?;
            if let Some(allowed) = allowed {
                cpus.retain(|c| allowed.contains(c));
            }
            if !cpus.is_empty() {
                nodes.push(Node { id, cpus });
            }
        }
        nodes.sort_by_key(|n| n.id);
        // A CPU listed under two nodes is a malformed tree: keep the first.
        let mut seen = std::collections::HashSet::new();
        for n in &mut nodes {
            n.cpus.retain(|c| seen.insert(*c));
        }
        nodes.retain(|n| !n.cpus.is_empty());
        Ok(Topology { nodes })
    }

    /// Total usable CPUs.
    pub fn n_cpus(&self) -> usize {
        self.nodes.iter().map(|n| n.cpus.len()).sum()
    }
}

/// How the engine maps itself onto the machine (`--numa`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NumaMode {
    /// One engine node per machine node.
    #[default]
    Auto,
    /// One node, whatever the machine has (no sharding).
    Off,
    /// Act as `n` nodes: the machine's CPUs are dealt out to `n` engine
    /// nodes. On a one-node machine this exercises the sharded path.
    Virtual(usize),
}

/// The most virtual nodes accepted (more is certainly a typo).
pub const MAX_VIRTUAL_NODES: usize = 64;

impl FromStr for NumaMode {
    type Err = NumaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => return Ok(NumaMode::Auto),
            "off" | "none" => return Ok(NumaMode::Off),
            _ => {}
        }
        let n = s
            .strip_prefix("virtual:")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=MAX_VIRTUAL_NODES).contains(n))
            .ok_or_else(|| NumaError::BadMode(s.clone()))?;
        Ok(NumaMode::Virtual(n))
    }
}

impl std::fmt::Display for NumaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumaMode::Auto => f.write_str("auto"),
            NumaMode::Off => f.write_str("off"),
            NumaMode::Virtual(n) => write!(f, "virtual:{n}"),
        }
    }
}

/// One engine node: the CPUs its workers are pinned to and the machine node
/// whose memory holds its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// Machine node for memory placement (None: do not bind memory, e.g. a
    /// node made of CPUs from several machine nodes).
    pub memory_node: Option<usize>,
    /// One entry per worker thread: the CPU it is pinned to.
    pub worker_cpus: Vec<usize>,
}

/// The engine's nodes and threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub nodes: Vec<NodePlan>,
    /// Pin workers (and the driver thread) to their CPUs. Off for tests
    /// that share a machine with others; on for the engine.
    pub pin: bool,
}

impl Layout {
    /// Plans `threads` workers (default: one per usable CPU) over the nodes
    /// `mode` asks for. Every engine node gets at least one worker; when
    /// there are fewer CPUs than workers, CPUs are shared (correct, slow).
    pub fn plan(
        topo: &Topology,
        mode: NumaMode,
        threads: Option<usize>,
    ) -> Result<Layout, NumaError> {
        if threads == Some(0) {
            return Err(NumaError::ZeroThreads);
        }
        let machine_nodes: Vec<Node> = if topo.nodes.is_empty() {
            Topology::single_node(None).nodes
        } else {
            topo.nodes.clone()
        };
        // (memory node, CPUs) per engine node, before thread counts.
        let groups: Vec<(Option<usize>, Vec<usize>)> = match mode {
            NumaMode::Auto => machine_nodes
                .iter()
                .map(|n| (Some(n.id), n.cpus.clone()))
                .collect(),
            NumaMode::Off => {
                let cpus: Vec<usize> = machine_nodes.iter().flat_map(|n| n.cpus.clone()).collect();
                let mem = (machine_nodes.len() == 1).then_some(machine_nodes[0].id);
                vec![(mem, cpus)]
            }
            NumaMode::Virtual(v) => {
                // Deal each machine node's CPUs out to the virtual nodes in
                // contiguous runs, so a virtual node stays inside one
                // machine node whenever the counts allow.
                let all: Vec<(usize, usize)> = machine_nodes
                    .iter()
                    .flat_map(|n| n.cpus.iter().map(move |&c| (n.id, c)))
                    .collect();
                (0..v)
                    .map(|i| {
                        let (a, b) = (i * all.len() / v, (i + 1) * all.len() / v);
                        let mut cpus: Vec<(usize, usize)> = all[a..b].to_vec();
                        if cpus.is_empty() {
                            cpus.push(all[i % all.len()]);
                        }
                        let mem = cpus[0].0;
                        let mem = cpus.iter().all(|c| c.0 == mem).then_some(mem);
                        (mem, cpus.into_iter().map(|c| c.1).collect())
                    })
                    .collect()
            }
        };
        let total_cpus: usize = groups.iter().map(|g| g.1.len()).sum();
        let total = threads.unwrap_or(total_cpus).max(groups.len());
        // Threads per node proportional to its CPUs, at least one each.
        let mut counts: Vec<usize> = groups
            .iter()
            .map(|g| (total * g.1.len() / total_cpus.max(1)).max(1))
            .collect();
        while counts.iter().sum::<usize>() > total {
            if let Some(c) = counts.iter_mut().filter(|c| **c > 1).max() {
                *c -= 1;
            } else {
                break;
            }
        }
        let mut i = 0;
        while counts.iter().sum::<usize>() < total {
            counts[i % groups.len()] += 1;
            i += 1;
        }
        let nodes = groups
            .into_iter()
            .zip(counts)
            .map(|((memory_node, cpus), n)| NodePlan {
                memory_node,
                worker_cpus: (0..n).map(|k| cpus[k % cpus.len()]).collect(),
            })
            .collect();
        Ok(Layout { nodes, pin: true })
    }

    pub fn n_threads(&self) -> usize {
        self.nodes.iter().map(|n| n.worker_cpus.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(nodes: &[&[usize]]) -> Topology {
        Topology {
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(id, c)| Node {
                    id,
                    cpus: c.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<NumaMode>().unwrap(), NumaMode::Auto);
        assert_eq!("OFF".parse::<NumaMode>().unwrap(), NumaMode::Off);
        assert_eq!(
            "virtual:3".parse::<NumaMode>().unwrap(),
            NumaMode::Virtual(3)
        );
        for bad in [
            "virtual:0",
            "virtual:",
            "virtual:x",
            "virtual:1000",
            "on",
            "",
        ] {
            assert!(bad.parse::<NumaMode>().is_err(), "{bad:?}");
        }
        assert_eq!(NumaMode::Virtual(2).to_string(), "virtual:2");
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let dir = std::env::temp_dir().join(format!("tandem-numa-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (node, list) in [("node0", "0-3\n"), ("node1", "4-7\n"), ("node2", "\n")] {
            std::fs::create_dir_all(dir.join(node)).unwrap();
            std::fs::write(dir.join(node).join("cpulist"), list).unwrap();
        }
        std::fs::create_dir_all(dir.join("power")).unwrap();
        let t = Topology::from_sysfs(&dir, None).unwrap();
        assert_eq!(t, topo(&[&[0, 1, 2, 3], &[4, 5, 6, 7]]));
        let t = Topology::from_sysfs(&dir, Some(&[1, 2, 5])).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(
            t.nodes[1],
            Node {
                id: 1,
                cpus: vec![5]
            }
        );
        std::fs::write(dir.join("node1").join("cpulist"), "garbage").unwrap();
        assert!(Topology::from_sysfs(&dir, None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn detect_finds_this_machine() {
        let t = Topology::detect();
        assert!(!t.nodes.is_empty() && t.n_cpus() >= 1, "{t:?}");
    }

    #[test]
    fn plans() {
        let two = topo(&[&[0, 1, 2, 3], &[4, 5, 6, 7]]);
        let l = Layout::plan(&two, NumaMode::Auto, None).unwrap();
        assert_eq!(l.nodes.len(), 2);
        assert_eq!(l.nodes[1].worker_cpus, vec![4, 5, 6, 7]);
        assert_eq!(l.nodes[1].memory_node, Some(1));
        let l = Layout::plan(&two, NumaMode::Off, Some(3)).unwrap();
        assert_eq!(l.nodes.len(), 1);
        assert_eq!(l.nodes[0].memory_node, None);
        assert_eq!(l.n_threads(), 3);
        let l = Layout::plan(&two, NumaMode::Auto, Some(2)).unwrap();
        assert_eq!(
            l.nodes
                .iter()
                .map(|n| n.worker_cpus.len())
                .collect::<Vec<_>>(),
            vec![1, 1]
        );

        let one = topo(&[&[0, 1]]);
        let l = Layout::plan(&one, NumaMode::Virtual(3), None).unwrap();
        assert_eq!(l.nodes.len(), 3);
        assert!(l
            .nodes
            .iter()
            .all(|n| n.worker_cpus.len() == 1 && n.memory_node == Some(0)));
        let l = Layout::plan(&one, NumaMode::Virtual(2), None).unwrap();
        assert_eq!(l.nodes[0].worker_cpus, vec![0]);
        assert_eq!(l.nodes[1].worker_cpus, vec![1]);
        // More threads than CPUs: shared CPUs, every node still served.
        let l = Layout::plan(&one, NumaMode::Auto, Some(5)).unwrap();
        assert_eq!(l.n_threads(), 5);
        assert!(Layout::plan(&one, NumaMode::Auto, Some(0)).is_err());
        // Virtual nodes spanning machine nodes do not bind memory.
        let l = Layout::plan(&two, NumaMode::Virtual(1), None).unwrap();
        assert_eq!(l.nodes[0].memory_node, None);
    }
}
