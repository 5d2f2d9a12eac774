//! Owners and groups across hosts: numbers sent with names, mapped through the receiver's own
//! user database.
//!
//! The sender sends each entry's uid and gid as its own numbers and, once per distinct number,
//! the name it has on the sending host ([`haul_proto::Names`]). The receiver maps a number to
//! the local user or group of the same name, and keeps the number when the name is unknown
//! there (or under `--numeric-ids`), as rsync does. POSIX ACLs name users and groups by number
//! too: their entries are mapped the same way ([`IdMapper::map_acl`]).

use std::collections::HashMap;

use bytes::Bytes;
use haul_proto::{Names, Xattr};

/// The sender's side: which numbers have had their names sent.
#[derive(Default)]
pub(crate) struct NameTable {
    users: HashMap<u32, ()>,
    groups: HashMap<u32, ()>,
}

impl NameTable {
    /// The names not sent yet for this entry's owner, group and ACL entries, as one message
    /// (None when every number is known to the receiver already).
    pub(crate) fn names_for(&mut self, uid: u32, gid: u32, xattrs: &[Xattr]) -> Option<Names> {
        let mut names = Names::default();
        let mut user = |id: u32, names: &mut Names| {
            if self.users.insert(id, ()).is_none()
                && let Ok(Some(u)) = nix::unistd::User::from_uid(id.into())
            {
                names.users.push((id, Bytes::from(u.name.into_bytes())));
            }
        };
        user(uid, &mut names);
        let mut acl_users = Vec::new();
        let mut acl_groups = Vec::new();
        for x in xattrs {
            if is_acl(&x.name) {
                acl_ids(&x.value, |tag, id| match tag {
                    ACL_USER => acl_users.push(id),
                    _ => acl_groups.push(id),
                });
            }
        }
        for id in acl_users {
            user(id, &mut names);
        }
        let mut group = |id: u32, names: &mut Names| {
            if self.groups.insert(id, ()).is_none()
                && let Ok(Some(g)) = nix::unistd::Group::from_gid(id.into())
            {
                names.groups.push((id, Bytes::from(g.name.into_bytes())));
            }
        };
        group(gid, &mut names);
        for id in acl_groups {
            group(id, &mut names);
        }
        (!names.users.is_empty() || !names.groups.is_empty()).then_some(names)
    }
}

/// The receiver's side: the sender's numbers to local ones.
#[derive(Debug, Default)]
pub(crate) struct IdMapper {
    numeric: bool,
    users: HashMap<u32, u32>,
    groups: HashMap<u32, u32>,
    /// Local number to the sender's, for comparing what the target holds with a digest made
    /// of the sender's numbers; `None` when two sender numbers map to one local number.
    users_back: HashMap<u32, Option<u32>>,
    groups_back: HashMap<u32, Option<u32>>,
}

/// Most distinct names one session may declare: the maps are bounded.
const MAX_NAMES: usize = 1 << 20;

impl IdMapper {
    /// A mapper; `numeric`: keep every number as it is (`--numeric-ids`).
    pub(crate) fn new(numeric: bool) -> IdMapper {
        IdMapper {
            numeric,
            ..IdMapper::default()
        }
    }

    /// Takes the names the sender declared.
    pub(crate) fn learn(&mut self, names: &Names) {
        if self.numeric {
            return;
        }
        for (id, name) in &names.users {
            if self.users.len() >= MAX_NAMES {
                break;
            }
            let local = std::str::from_utf8(name)
                .ok()
                .and_then(|n| nix::unistd::User::from_name(n).ok().flatten())
                .map_or(*id, |u| u.uid.as_raw());
            insert(&mut self.users, &mut self.users_back, *id, local);
        }
        for (id, name) in &names.groups {
            if self.groups.len() >= MAX_NAMES {
                break;
            }
            let local = std::str::from_utf8(name)
                .ok()
                .and_then(|n| nix::unistd::Group::from_name(n).ok().flatten())
                .map_or(*id, |g| g.gid.as_raw());
            insert(&mut self.groups, &mut self.groups_back, *id, local);
        }
    }

    /// The local uid for the sender's `uid`.
    pub(crate) fn uid(&self, uid: u32) -> u32 {
        self.users.get(&uid).copied().unwrap_or(uid)
    }

    /// The local gid for the sender's `gid`.
    pub(crate) fn gid(&self, gid: u32) -> u32 {
        self.groups.get(&gid).copied().unwrap_or(gid)
    }

    /// The sender's number for a local owner and group, as the sender's quick-check digest
    /// has it; `u32::MAX` where no single sender number maps there (the check then fails and
    /// the files are compared one by one).
    pub(crate) fn back(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            back(&self.users, &self.users_back, uid),
            back(&self.groups, &self.groups_back, gid),
        )
    }

    /// An ACL value with its user and group entries mapped to local numbers; other values
    /// unchanged.
    pub(crate) fn map_xattr(&self, x: &Xattr) -> Xattr {
        if self.numeric || !is_acl(&x.name) {
            return x.clone();
        }
        Xattr {
            name: x.name.clone(),
            value: self.map_acl(&x.value),
        }
    }

    /// See [`IdMapper::map_xattr`]: a malformed value is returned as it is (the kernel will
    /// refuse it, and that is reported).
    pub(crate) fn map_acl(&self, value: &[u8]) -> Bytes {
        let mut out = value.to_vec();
        let mut at = ACL_HEADER;
        if !well_formed_acl(value) {
            return Bytes::from(out);
        }
        while at + ACL_ENTRY <= out.len() {
            let tag = u16::from_le_bytes([out[at], out[at + 1]]);
            let id_at = at + 4;
            let id =
                u32::from_le_bytes([out[id_at], out[id_at + 1], out[id_at + 2], out[id_at + 3]]);
            let mapped = match tag {
                ACL_USER => self.uid(id),
                ACL_GROUP => self.gid(id),
                _ => id,
            };
            out[id_at..id_at + 4].copy_from_slice(&mapped.to_le_bytes());
            at += ACL_ENTRY;
        }
        Bytes::from(out)
    }
}

fn insert(
    forward: &mut HashMap<u32, u32>,
    backward: &mut HashMap<u32, Option<u32>>,
    remote: u32,
    local: u32,
) {
    forward.insert(remote, local);
    backward
        .entry(local)
        .and_modify(|r| {
            if *r != Some(remote) {
                *r = None;
            }
        })
        .or_insert(Some(remote));
}

fn back(forward: &HashMap<u32, u32>, backward: &HashMap<u32, Option<u32>>, local: u32) -> u32 {
    match backward.get(&local) {
        Some(Some(remote)) => *remote,
        Some(None) => u32::MAX,
        // Nobody maps to it: it is the sender's own number unless that number maps elsewhere.
        None if forward.get(&local).is_some_and(|l| *l != local) => u32::MAX,
        None => local,
    }
}

/// The xattr names of POSIX ACLs.
fn is_acl(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// The kernel's ACL xattr format: a 4-byte version, then 8-byte entries (tag, perm, id).
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// A header and whole entries (the kernel refuses anything else).
fn well_formed_acl(value: &[u8]) -> bool {
    value.len() >= ACL_HEADER && (value.len() - ACL_HEADER).is_multiple_of(ACL_ENTRY)
}

/// Calls `each(tag, id)` for the named-user and named-group entries of an ACL value.
fn acl_ids(value: &[u8], mut each: impl FnMut(u16, u32)) {
    if !well_formed_acl(value) {
        return;
    }
    for e in value[ACL_HEADER..].chunks_exact(ACL_ENTRY) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        if tag == ACL_USER || tag == ACL_GROUP {
            each(tag, u32::from_le_bytes([e[4], e[5], e[6], e[7]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn unknown_names_keep_their_numbers_and_known_ones_map() {
        let mut m = IdMapper::new(false);
        m.learn(&Names {
            users: vec![
                (4242, Bytes::from_static(b"no-such-user-here")),
                (77, Bytes::from_static(b"root")),
            ],
            groups: vec![(88, Bytes::from_static(b"root"))],
        });
        assert_eq!(m.uid(4242), 4242);
        assert_eq!(m.uid(77), 0);
        assert_eq!(m.gid(88), 0);
        assert_eq!(m.uid(5), 5, "a number without a declared name is kept");
        assert_eq!(m.back(0, 0), (77, 88));
        // Local 77 is not the image of anything, but the sender's 77 maps elsewhere.
        assert_eq!(m.back(77, 5).0, u32::MAX);
        assert_eq!(m.back(4242, 5), (4242, 5));
    }

    #[test]
    fn numeric_ids_ignore_names() {
        let mut m = IdMapper::new(true);
        m.learn(&Names {
            users: vec![(77, Bytes::from_static(b"root"))],
            groups: vec![],
        });
        assert_eq!(m.uid(77), 77);
    }

    #[test]
    fn acl_entries_are_mapped_and_others_kept() {
        let mut m = IdMapper::new(false);
        m.learn(&Names {
            users: vec![(77, Bytes::from_static(b"root"))],
            groups: vec![(88, Bytes::from_static(b"root"))],
        });
        let value = acl(&[
            (0x01, 6, u32::MAX),
            (ACL_USER, 4, 77),
            (0x04, 4, u32::MAX),
            (ACL_GROUP, 4, 88),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ]);
        let mapped = m.map_acl(&value);
        let want = acl(&[
            (0x01, 6, u32::MAX),
            (ACL_USER, 4, 0),
            (0x04, 4, u32::MAX),
            (ACL_GROUP, 4, 0),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ]);
        assert_eq!(&mapped[..], &want[..]);
        let mut seen = Vec::new();
        acl_ids(&value, |t, id| seen.push((t, id)));
        assert_eq!(seen, vec![(ACL_USER, 77), (ACL_GROUP, 88)]);
        // Malformed: returned unchanged.
        assert_eq!(&m.map_acl(&[1, 2, 3])[..], &[1, 2, 3]);
    }

    #[test]
    fn each_name_is_sent_once() {
        let mut t = NameTable::default();
        let first = t.names_for(0, 0, &[]).expect("root has a name");
        assert_eq!(first.users.len(), 1);
        assert_eq!(first.groups.len(), 1);
        assert!(t.names_for(0, 0, &[]).is_none());
    }
}
