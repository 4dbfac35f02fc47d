//! The big lists (virtual disks, VMs) and single gets from them, served from a cache.
//!
//! Building every view on the node and encoding it for each request made the VM list ~9 x and
//! the virtual disk list ~30 x slower than nginx serving the same bytes. Here each list is
//! fetched from the node once per change and kept (typed, sorted) together with the encoded
//! pages and items handed out so far; a request that finds them costs a policy check and a
//! copy of a reference-counted buffer.
//!
//! When a kept list is still right: the node's change counter
//! ([`control::Controller::generation`]) is the one it was fetched under (any mutation, from any
//! front end, moves it), and it is younger than [`FRESH`] — counters such as `used_bytes` and VM
//! statistics move without a mutation, and so do VMs whose guest powered itself off. A
//! controller that does not count changes gets no caching. While one request re-fetches a list
//! that only aged, the others get the aged copy (at most [`AGED_MAX`] old) instead of waiting.
//!
//! What it must never do: answer without the caller's role check and input validation (both
//! run on every request, hit or miss), or keep unbounded data (one list per kind, at most
//! [`MAX_PAGES`] encoded pages of it).

use crate::http::{self as h, Resp};
use crate::routes::R;
use crate::state::{Caller, State};
use bytes::Bytes;
use control::{ControlError, Reply, Request, VdiskView, VmView};
use http::StatusCode;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a kept list may be served when nothing changed through the controller.
pub const FRESH: Duration = Duration::from_secs(1);
/// While one request fetches an aged list (no change, only older than [`FRESH`]), the others
/// are answered from the aged one rather than queueing behind the fetch (which, for thousands
/// of items on a busy node, took tens of milliseconds and put every request of that moment in
/// the p99). Never past this age, and never once the change counter moved.
pub const AGED_MAX: Duration = Duration::from_secs(5);
/// Encoded pages kept per list (distinct limit/cursor pairs); beyond that the pages start over.
pub const MAX_PAGES: usize = 64;

/// One kept list, sorted by name.
struct Kept<T> {
    generation: u64,
    at: Instant,
    items: Vec<T>,
    /// Each item encoded on first use (single gets).
    encoded: Vec<OnceLock<Bytes>>,
    pages: Mutex<HashMap<(usize, Option<String>), Bytes>>,
}

impl<T: Serialize> Kept<T> {
    fn new(generation: u64, mut items: Vec<T>, key: fn(&T) -> &str) -> Kept<T> {
        // The node answers sorted; sort only if it did not.
        if !items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
            items.sort_by(|a, b| key(a).cmp(key(b)));
        }
        Kept {
            generation,
            at: Instant::now(),
            encoded: (0..items.len()).map(|_| OnceLock::new()).collect(),
            items,
            pages: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, generation: Option<u64>) -> bool {
        generation == Some(self.generation) && self.at.elapsed() < FRESH
    }

    /// Good enough to answer while another request is fetching a newer copy: nothing changed
    /// through the controller since, and it is not much older than [`FRESH`].
    fn servable_while_refreshing(&self, generation: Option<u64>) -> bool {
        generation == Some(self.generation) && self.at.elapsed() < AGED_MAX
    }

    /// One page: items after `cursor`, at most `limit`, and the next page's cursor (null on
    /// the last page) — the same cut as [`h::page_by`].
    fn page(&self, key: fn(&T) -> &str, limit: usize, cursor: Option<&str>) -> Bytes {
        let k = (limit, cursor.map(str::to_string));
        if let Some(b) = self.pages.lock().get(&k) {
            return b.clone();
        }
        let b = Bytes::from(encode_page(&self.items, key, limit, cursor));
        let mut pages = self.pages.lock();
        if pages.len() >= MAX_PAGES {
            pages.clear();
        }
        pages.insert(k, b.clone());
        b
    }

    fn item(&self, key: fn(&T) -> &str, name: &str) -> Option<Bytes> {
        let i = self.items.binary_search_by(|it| key(it).cmp(name)).ok()?;
        Some(
            self.encoded[i]
                .get_or_init(|| {
                    serde_json::to_vec(&self.items[i])
                        .unwrap_or_default()
                        .into()
                })
                .clone(),
        )
    }
}

#[derive(Serialize)]
struct PageOut<'a, T> {
    items: &'a [T],
    next_cursor: Option<&'a str>,
}

/// `{"items":[..],"next_cursor":..}` for a sorted list.
fn encode_page<T: Serialize>(
    items: &[T],
    key: fn(&T) -> &str,
    limit: usize,
    cursor: Option<&str>,
) -> Vec<u8> {
    let start = cursor.map_or(0, |c| items.partition_point(|i| key(i) <= c));
    let end = start.saturating_add(limit).min(items.len());
    let next = (end < items.len() && end > start).then(|| key(&items[end - 1]));
    serde_json::to_vec(&PageOut {
        items: &items[start..end],
        next_cursor: next,
    })
    .unwrap_or_default()
}

/// One kind of list: the kept copy and a lock so that a miss under load asks the node once.
struct Slot<T> {
    kept: RwLock<Option<Arc<Kept<T>>>>,
    fill: tokio::sync::Mutex<()>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            kept: RwLock::new(None),
            fill: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T: Serialize> Slot<T> {
    fn current(&self, generation: Option<u64>) -> Option<Arc<Kept<T>>> {
        self.kept
            .read()
            .as_ref()
            .filter(|k| k.fresh(generation))
            .cloned()
    }

    fn aged(&self, generation: Option<u64>) -> Option<Arc<Kept<T>>> {
        self.kept
            .read()
            .as_ref()
            .filter(|k| k.servable_while_refreshing(generation))
            .cloned()
    }

    /// The list as the node has it now (or kept since the last change, briefly). The caller
    /// has checked the role and the request already.
    async fn get(
        &self,
        st: &State,
        c: &Caller,
        req: Request,
        key: fn(&T) -> &str,
        take: fn(Reply) -> Option<Vec<T>>,
    ) -> Result<Arc<Kept<T>>, ControlError> {
        let before = st.lists.generation(st);
        if let Some(k) = self.current(before) {
            return Ok(k);
        }
        // With nothing to keep, every request asks the node (no queueing behind one another).
        let _filling = match before {
            Some(_) => match self.fill.try_lock() {
                Ok(g) => Some(g),
                // Someone is fetching already: a list that only aged is served meanwhile; after
                // a change, wait for the fetch (a caller must see its own change).
                Err(_) => match self.aged(before) {
                    Some(k) => return Ok(k),
                    None => Some(self.fill.lock().await),
                },
            },
            None => None,
        };
        // Read before asking: a change that lands meanwhile moves the counter past it, so the
        // list kept here is never taken for one fetched after that change.
        let generation = st.lists.generation(st);
        if let Some(k) = self.current(generation) {
            return Ok(k);
        }
        let action = req.action();
        let items = take(st.run(c, req).await?).ok_or_else(|| {
            ControlError::internal(format!("the node answered {action} with something else"))
        })?;
        let kept = Arc::new(Kept::new(generation.unwrap_or(0), items, key));
        if generation.is_some() {
            *self.kept.write() = Some(kept.clone());
        }
        Ok(kept)
    }
}

/// The cached lists of one server.
pub struct ListCache {
    enabled: bool,
    vdisks: Slot<VdiskView>,
    vms: Slot<VmView>,
}

impl ListCache {
    pub fn new(enabled: bool) -> ListCache {
        ListCache {
            enabled,
            vdisks: Slot::default(),
            vms: Slot::default(),
        }
    }

    /// The node's change counter, or none when caching is off.
    fn generation(&self, st: &State) -> Option<u64> {
        self.enabled.then(|| st.controller.generation()).flatten()
    }
}

fn vdisk_key(v: &VdiskView) -> &str {
    &v.name
}
fn vm_key(v: &VmView) -> &str {
    &v.name
}
fn take_vdisks(r: Reply) -> Option<Vec<VdiskView>> {
    match r {
        Reply::Vdisks(v) => Some(v),
        _ => None,
    }
}
fn take_vms(r: Reply) -> Option<Vec<VmView>> {
    match r {
        Reply::Vms(v) => Some(v),
        _ => None,
    }
}

fn ok(b: Bytes) -> Resp {
    h::with_type(StatusCode::OK, "application/json", b)
}

/// Answer `GET /vdisks`, `/vms` (always) and `/vdisks/{name}`, `/vms/{name}` (when the kept
/// list has the name; otherwise `None` and the request goes to the node, which says why it is
/// missing).
pub(crate) async fn serve(
    st: &State,
    r: R,
    params: &[String],
    q: &[(String, String)],
    c: &Caller,
) -> Result<Option<Resp>, ControlError> {
    let cache = &st.lists;
    let name = || params.first().cloned().unwrap_or_default();
    match r {
        R::Vdisks | R::Vms => {
            let (limit, cursor) = h::paging(q)?;
            let cur = cursor.as_deref();
            let page = if r == R::Vdisks {
                let req = Request::VdiskList;
                st.precheck(c, &req)?;
                let k = cache.vdisks.get(st, c, req, vdisk_key, take_vdisks).await?;
                k.page(vdisk_key, limit, cur)
            } else {
                let req = Request::VmList;
                st.precheck(c, &req)?;
                let k = cache.vms.get(st, c, req, vm_key, take_vms).await?;
                k.page(vm_key, limit, cur)
            };
            Ok(Some(ok(page)))
        }
        // Without a change counter nothing is kept: ask the node for the one item.
        R::VdiskGet | R::VmGet if cache.generation(st).is_none() => Ok(None),
        R::VdiskGet => {
            let req = Request::VdiskGet { name: name() };
            st.precheck(c, &req)?;
            let k = cache
                .vdisks
                .get(st, c, Request::VdiskList, vdisk_key, take_vdisks);
            Ok(item_or_none(k.await, vdisk_key, &name()).map(ok))
        }
        R::VmGet => {
            let req = Request::VmGet { name: name() };
            st.precheck(c, &req)?;
            let k = cache.vms.get(st, c, Request::VmList, vm_key, take_vms);
            Ok(item_or_none(k.await, vm_key, &name()).map(ok))
        }
        _ => Ok(None),
    }
}

/// A single get served from the kept list; any failure to have one leaves it to the node.
fn item_or_none<T: Serialize>(
    k: Result<Arc<Kept<T>>, ControlError>,
    key: fn(&T) -> &str,
    name: &str,
) -> Option<Bytes> {
    k.ok()?.item(key, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(b: &[u8]) -> (Vec<String>, Option<String>) {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        let items = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        (items, v["next_cursor"].as_str().map(str::to_string))
    }

    #[allow(clippy::ptr_arg)] // the lists' key functions take their item type
    fn key(s: &String) -> &str {
        s
    }

    #[test]
    fn pages_match_page_by_and_walk_every_item_once() {
        let list: Vec<String> = ["d", "a", "c", "b", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let kept = Kept::new(7, list.clone(), key);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let b = kept.page(key, 2, cursor.as_deref());
            // The same cut and the same JSON as the uncached pager.
            let reference = h::page_by(list.clone(), |s| s.as_str(), 2, cursor.as_deref());
            let ours: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(ours, reference);
            // Asked again, the very same buffer comes back.
            assert_eq!(kept.page(key, 2, cursor.as_deref()).as_ptr(), b.as_ptr());
            let (items, next) = names(&b);
            seen.extend(items);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert_eq!(names(&kept.page(key, 2, Some("zz"))), (vec![], None));
    }

    #[test]
    fn items_found_by_name_and_pages_bounded() {
        let list: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let kept = Kept::new(1, list, key);
        assert_eq!(&kept.item(key, "n3").unwrap()[..], b"\"n3\"");
        assert!(kept.item(key, "n33").is_none());
        for limit in 1..=(MAX_PAGES + 5) {
            let _ = kept.page(key, limit, None);
        }
        assert!(kept.pages.lock().len() <= MAX_PAGES);
    }

    #[test]
    fn freshness_needs_same_generation_and_youth() {
        let kept = Kept::new(5, vec!["a".to_string()], key);
        assert!(kept.fresh(Some(5)));
        assert!(!kept.fresh(Some(6)), "a change makes it stale");
        assert!(!kept.fresh(None), "no change counter, no caching");
        let old = Kept {
            at: Instant::now() - FRESH - Duration::from_millis(1),
            ..Kept::new(5, vec!["a".to_string()], key)
        };
        assert!(!old.fresh(Some(5)), "counters move without changes");
        assert!(
            old.servable_while_refreshing(Some(5)),
            "an aged list answers while another request fetches"
        );
        assert!(
            !old.servable_while_refreshing(Some(6)),
            "never once something changed"
        );
        let ancient = Kept {
            at: Instant::now() - AGED_MAX - Duration::from_millis(1),
            ..Kept::new(5, vec!["a".to_string()], key)
        };
        assert!(!ancient.servable_while_refreshing(Some(5)));
    }
}
