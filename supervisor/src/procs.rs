//! What `/proc` says about processes: parents (to count a service's processes) and
//! network namespaces (a daemon serves only services of its own).

use std::os::unix::fs::MetadataExt;

/// `(pid, parent)` of every process visible in `/proc`.
pub fn parents() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// Every descendant of `root` (children, their children, ...), in `parents`.
pub fn descendants(root: i32, parents: &[(i32, i32)]) -> Vec<i32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|&&(_, p)| p == parent).map(|&(pid, _)| pid));
        i += 1;
    }
    tree.remove(0);
    tree
}

/// What the descriptor `fd` of this process is, as `/proc/self/fd` names it (for a seccomp
/// listener, `anon_inode:seccomp notify`).
pub fn descriptor_kind(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<String> {
    use std::os::fd::AsRawFd;
    Ok(std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.to_string_lossy().into_owned())
}

/// The network namespace of `pid` (`self` for this process) as `(device, inode)`.
pub fn net_namespace(pid: &str) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_walk_the_whole_tree_and_only_it() {
        let p = [(1, 0), (10, 1), (11, 10), (12, 11), (13, 10), (20, 1), (21, 20)];
        let mut d = descendants(10, &p);
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(12, &p).is_empty());
    }

    #[test]
    fn this_process_is_a_descendant_of_its_parent() {
        let me = std::process::id() as i32;
        let parent = nix::unistd::getppid().as_raw();
        assert!(descendants(parent, &parents()).contains(&me));
        assert_eq!(net_namespace("self").unwrap(), net_namespace(&me.to_string()).unwrap());
    }
}
