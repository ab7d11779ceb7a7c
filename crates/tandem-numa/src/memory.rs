//! Node-local memory: anonymous mappings bound to a machine node, and a
//! query of where a page actually lives.
//!
//! Weights of a node's shard are copied once, at load, into a
//! [`NodeMemory`] bound (`mbind`, `MPOL_PREFERRED`) to that node and touched
//! first by that node's pinned workers, so the kernel places the pages there
//! even where `mbind` is refused (containers). Transparent huge pages are
//! requested: a decode step streams the whole model, and 4 KiB pages would
//! cost a TLB miss every 4 KiB.

use memmap2::MmapMut;

use crate::NumaError;

/// An anonymous, zero-filled mapping meant to live on one machine node.
pub struct NodeMemory {
    map: MmapMut,
    node: Option<usize>,
    bound: bool,
}

impl std::fmt::Debug for NodeMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NodeMemory({} bytes, node {:?}, bound {})",
            self.map.len(),
            self.node,
            self.bound
        )
    }
}

impl NodeMemory {
    /// Maps `len` bytes (at least one page) for `node` (None: wherever the
    /// kernel likes). Nothing is touched yet.
    pub fn new(len: usize, node: Option<usize>) -> Result<NodeMemory, NumaError> {
        let map = MmapMut::map_anon(len.max(1)).map_err(|e| NumaError::Map {
            bytes: len,
            source: e,
        })?;
        #[cfg(target_os = "linux")]
        {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let bound = match node {
            Some(n) => bind(map.as_ptr(), map.len(), n),
            None => false,
        };
        Ok(NodeMemory { map, node, bound })
    }

    /// Maps `len` bytes whose pages are spread round-robin over machine
    /// nodes `nodes` (`MPOL_INTERLEAVE`): memory that threads of every
    /// node read alike (an MLA latent cache, which all nodes attend over)
    /// draws on every node's memory channels instead of one node's.
    pub fn interleaved(len: usize, nodes: &[usize]) -> Result<NodeMemory, NumaError> {
        let map = MmapMut::map_anon(len.max(1)).map_err(|e| NumaError::Map {
            bytes: len,
            source: e,
        })?;
        #[cfg(target_os = "linux")]
        {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let bound =
            nodes.len() > 1 && set_policy(map.as_ptr(), map.len(), Policy::Interleave, nodes);
        Ok(NodeMemory {
            map,
            node: None,
            bound,
        })
    }

    /// Asks the kernel to fault every page in now, placed by the mapping's
    /// policy (`MADV_POPULATE_WRITE`, Linux 5.14 and later): memory that
    /// will be used anyway is then committed before the work starts, costs
    /// no page fault later, and the process's resident size stops growing.
    /// An error where the kernel cannot (the caller may touch the pages
    /// itself).
    pub fn populate(&self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            self.map.advise(memmap2::Advice::PopulateWrite)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
        }
    }

    /// The machine node asked for.
    pub fn node(&self) -> Option<usize> {
        self.node
    }
    /// Whether `mbind` accepted the binding (if not, placement relies on
    /// first touch by the node's pinned workers).
    pub fn is_bound(&self) -> bool {
        self.bound
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

/// The `mbind` policies tandem uses.
#[derive(Clone, Copy, Debug)]
enum Policy {
    /// `MPOL_PREFERRED`: on the node if it has room.
    Preferred,
    /// `MPOL_INTERLEAVE`: pages round-robin over the nodes.
    Interleave,
}

fn bind(addr: *const u8, len: usize, node: usize) -> bool {
    set_policy(addr, len, Policy::Preferred, &[node])
}

#[cfg(target_os = "linux")]
fn set_policy(addr: *const u8, len: usize, policy: Policy, nodes: &[usize]) -> bool {
    let mode: libc::c_long = match policy {
        Policy::Preferred => 1,
        Policy::Interleave => 3,
    };
    let bits = 8 * std::mem::size_of::<libc::c_ulong>();
    let mut mask = [0 as libc::c_ulong; 64];
    for &node in nodes {
        if node >= 64 * bits {
            return false;
        }
        mask[node / bits] |= 1 << (node % bits);
    }
    // SAFETY: mbind only changes the policy of our own mapping
    // [addr, addr+len); the mask is a valid array of `64 * bits` bits.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as *mut libc::c_void,
            len as libc::c_ulong,
            mode,
            mask.as_ptr(),
            (64 * bits) as libc::c_ulong,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "mbind ({policy:?}) to nodes {nodes:?} refused: {}",
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn set_policy(_: *const u8, _: usize, _: Policy, _: &[usize]) -> bool {
    false
}

/// Drops the whole pages inside `bytes` from the process's resident set
/// (`madvise(MADV_DONTNEED)`). Partial pages at either end are kept.
///
/// # Safety
/// `bytes` must lie in a read-only mapping of a file: such pages are read
/// back from the file on the next access. On anonymous or private written
/// memory this would replace the contents with zeros.
pub unsafe fn release_file_pages(bytes: &[u8]) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        #[cfg(target_os = "linux")]
        {
            let page = 4096usize;
            let start = (bytes.as_ptr() as usize).next_multiple_of(page);
            let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
            if end > start {
                // SAFETY: the caller guarantees a file-backed read-only range;
                // a failure only leaves the pages resident.
                let _ = libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = bytes;
    }
}

/// The machine node holding the page at `addr`, per `get_mempolicy`
/// (`MPOL_F_NODE | MPOL_F_ADDR`). None where the kernel does not say
/// (no NUMA support, seccomp) or the page is not yet faulted in.
#[cfg(target_os = "linux")]
pub fn page_node(addr: *const u8) -> Option<usize> {
    const MPOL_F_NODE: libc::c_ulong = 1;
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int to `node`; nodemask is null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr as *mut libc::c_void,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    (rc == 0 && node >= 0).then_some(node as usize)
}

#[cfg(not(target_os = "linux"))]
pub fn page_node(_: *const u8) -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;

    #[test]
    fn memory_lands_on_the_node_asked_for() {
        let topo = Topology::detect();
        for n in &topo.nodes {
            let mut m = NodeMemory::new(4 << 20, Some(n.id)).unwrap();
            m.as_mut_slice().fill(1);
            assert_eq!(m.as_slice()[(4 << 20) - 1], 1);
            match page_node(m.as_slice().as_ptr()) {
                Some(found) => assert_eq!(found, n.id, "page placed on the wrong node"),
                None => eprintln!("note: get_mempolicy unavailable here; placement not checked"),
            }
        }
    }
}
