//! Hard links: each multiply-linked file is sent once, under the first of its names the scan
//! meets; its other names are announced as links to that one once the receiver has installed
//! it. Names met while the first is still in flight wait here, and go back to the front of the
//! control loop's queue when it is installed (to be links) or fails (the next name is then
//! sent as the file).

use std::collections::{HashMap, VecDeque};

use haul_manifest::ScanEntry;
use haul_proto::EntryKind;

use super::scan::ScanItem;
use crate::idmap::IdMap;

/// A multiply-linked file, by (dev, ino).
pub(super) type LinkKey = (u64, u64);

/// The names of one multiply-linked file met so far.
struct LinkGroup {
    /// The first name (sent as a file), relative to the source root; taken into `installed`
    /// once it is.
    rel: Vec<u8>,
    /// The first name, once the receiver has installed it: later names link to it.
    installed: Option<Vec<u8>>,
    /// Names met while the first was still in flight.
    waiting: Vec<ScanEntry>,
    /// Names announced so far; at `nlink` the group is complete and forgotten.
    seen: u64,
    nlink: u64,
}

/// The link groups of one session.
pub(super) struct HardLinks {
    /// Copy hard links as links (`--no-hard-links` turns it off).
    enabled: bool,
    /// Groups by (dev, ino) of multiply-linked files.
    groups: HashMap<LinkKey, LinkGroup>,
    /// The group of each first name in flight, by its entry id.
    first_of: IdMap<LinkKey>,
    /// Names waiting for their group's first file to be installed.
    waiting: usize,
}

impl HardLinks {
    pub(super) fn new(enabled: bool) -> HardLinks {
        HardLinks {
            enabled,
            groups: HashMap::new(),
            first_of: IdMap::default(),
            waiting: 0,
        }
    }

    /// Names held back until their group's first file is installed or fails.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Takes a scanned entry before it is announced. Returns it to announce, turned into a
    /// link when its group's first name is installed already, with the key of the group it
    /// starts if it is the first name of a multiply-linked file (see [`Self::announced`]);
    /// or `None` when it must wait for the first name.
    pub(super) fn admit(&mut self, mut entry: ScanEntry) -> Option<(ScanEntry, Option<LinkKey>)> {
        // A multiply-linked file: its first name is sent as a file, the others as links to
        // it once it is installed.
        let mut first_of = None;
        if self.enabled && entry.kind == EntryKind::File && entry.nlink > 1 {
            let key = (entry.dev, entry.ino);
            match self.groups.get_mut(&key) {
                None => first_of = Some(key),
                Some(group) => match &group.installed {
                    Some(first) => {
                        entry.link_target = first.clone();
                        entry.kind = EntryKind::HardLink;
                        entry.size = 0;
                        entry.xattrs.clear();
                        group.seen += 1;
                        if group.seen >= group.nlink {
                            self.groups.remove(&key);
                        }
                    }
                    None => {
                        group.waiting.push(entry);
                        self.waiting += 1;
                        return None;
                    }
                },
            }
        }
        Some((entry, first_of))
    }

    /// The first name of group `key` was announced as entry `id`.
    pub(super) fn announced(&mut self, id: u64, key: LinkKey, entry: &ScanEntry) {
        self.groups.insert(
            key,
            LinkGroup {
                rel: entry.rel.clone(),
                installed: None,
                waiting: Vec::new(),
                seen: 1,
                nlink: entry.nlink,
            },
        );
        self.first_of.insert(id, key);
    }

    /// Entry `id` was installed: if it is a group's first name, the names waiting for it go
    /// to the front of `scanned`, in order, to be announced as links next.
    pub(super) fn installed(&mut self, id: u64, scanned: &mut VecDeque<ScanItem>) {
        if let Some(key) = self.first_of.remove(&id)
            && let Some(group) = self.groups.get_mut(&key)
        {
            group.installed = Some(std::mem::take(&mut group.rel));
            self.waiting -= group.waiting.len();
            for entry in group.waiting.drain(..).rev() {
                scanned.push_front(ScanItem::Entry(entry));
            }
        }
    }

    /// Entry `id` failed: if it is a group's first name, the group is forgotten and the names
    /// waiting go to the front of `scanned`; the next of them becomes its first, sent as a file.
    pub(super) fn failed(&mut self, id: u64, scanned: &mut VecDeque<ScanItem>) {
        if let Some(key) = self.first_of.remove(&id)
            && let Some(group) = self.groups.remove(&key)
        {
            self.waiting -= group.waiting.len();
            for entry in group.waiting.into_iter().rev() {
                scanned.push_front(ScanItem::Entry(entry));
            }
        }
    }
}
