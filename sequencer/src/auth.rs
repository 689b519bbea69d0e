//! etcd's auth (users, roles, key permissions, enable and disable) as replicated state.
//!
//! A stock etcd keeps its auth store behind Raft; here it is a fold over the committed
//! [`AuthChange`] operations, so every bank holds the same users and roles after the same
//! operations and checks every ordered write against the permissions in force at its position.
//! Passwords are hashed by the bank that receives them, before ordering (as etcd 3.5 hashes
//! before Raft): no other bank, and no ledger, sees one. Tokens are each bank's own affair.
//!
//! The rules follow etcd 3.5's auth store: the `root` role is built in and allows everything;
//! management calls need it once auth is enabled; a key range is permitted when the union of
//! the user's roles' permissions of that type covers it.

use std::collections::{BTreeMap, BTreeSet};

use bftcd_proto::authpb::{permission::Type as PermType, Permission};
use bftcd_proto::bftcd::{auth_change::Change, AuthChange};
use bftcd_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};

/// The built-in role (and the user that must hold it before auth can be enabled).
pub const ROOT: &str = "root";

/// etcd's auth errors (api/v3rpc/rpctypes), text byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    UserEmpty,
    UserAlreadyExists,
    UserNotFound,
    RoleEmpty,
    RoleAlreadyExists,
    RoleNotFound,
    RoleNotGranted,
    PermissionNotGranted,
    PermissionDenied,
    RootUserNotExist,
    RootRoleNotExist,
    InvalidAuthManagement,
    AuthFailed,
    AuthNotEnabled,
    InvalidToken,
    NoPasswordUser,
}

/// How a client sees an [`AuthError`]: the gRPC code etcd uses for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
}

impl AuthError {
    pub fn text(self) -> &'static str {
        match self {
            AuthError::UserEmpty => "etcdserver: user name is empty",
            AuthError::UserAlreadyExists => "etcdserver: user name already exists",
            AuthError::UserNotFound => "etcdserver: user name not found",
            AuthError::RoleEmpty => "etcdserver: role name is empty",
            AuthError::RoleAlreadyExists => "etcdserver: role name already exists",
            AuthError::RoleNotFound => "etcdserver: role name not found",
            AuthError::RoleNotGranted => "etcdserver: role is not granted to the user",
            AuthError::PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthError::PermissionDenied => "etcdserver: permission denied",
            AuthError::RootUserNotExist => "etcdserver: root user does not exist",
            AuthError::RootRoleNotExist => "etcdserver: root user does not have root role",
            AuthError::InvalidAuthManagement => "etcdserver: invalid auth management",
            AuthError::AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
            AuthError::AuthNotEnabled => "etcdserver: authentication is not enabled",
            AuthError::InvalidToken => "etcdserver: invalid auth token",
            AuthError::NoPasswordUser => "etcdserver: authentication failed, password was given for no password user",
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::NoPasswordUser
            | AuthError::InvalidAuthManagement => ErrorCode::InvalidArgument,
            AuthError::PermissionDenied => ErrorCode::PermissionDenied,
            AuthError::InvalidToken => ErrorCode::Unauthenticated,
            _ => ErrorCode::FailedPrecondition,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct User {
    /// bcrypt hash; empty for a user without a password (certificate CN only).
    pub hashed_password: String,
    pub roles: BTreeSet<String>,
    pub no_password: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    /// Each role's permissions, sorted by (key, range_end) as etcd keeps them.
    roles: BTreeMap<String, Vec<Permission>>,
}

/// `[start, end)`; None = to the end of the key space.
type Interval = (Vec<u8>, Option<Vec<u8>>);

use crate::ownership::interval;

/// Does the union of `granted` cover `want`?
fn covered(want: &Interval, mut granted: Vec<Interval>) -> bool {
    granted.sort();
    let mut cur = want.0.clone();
    let done = |cur: &Vec<u8>| want.1.as_ref().is_some_and(|e| cur >= e);
    if done(&cur) {
        return true;
    }
    for (start, end) in granted {
        if start > cur {
            return false;
        }
        match end {
            None => return true,
            Some(e) if e > cur => {
                cur = e;
                if done(&cur) {
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    false
}

impl AuthStore {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// etcd's auth revision: 1 for a fresh store, one more with every change of users, roles
    /// or permissions and with disabling (enabling does not count, as in etcd 3.5).
    pub fn revision(&self) -> u64 {
        self.revision + 1
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|s| s.as_str())
    }

    pub fn role(&self, name: &str) -> Option<&[Permission]> {
        self.roles.get(name).map(|p| p.as_slice())
    }

    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(|s| s.as_str())
    }

    fn has_root(&self, user: &User) -> bool {
        user.roles.contains(ROOT)
    }

    /// May `user` manage auth (and call admin-only maintenance)? Always while auth is off.
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let u = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        if self.has_root(u) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// May `user` read (or write) `[key, range_end)`? Always while auth is off.
    pub fn check_range(&self, user: Option<&str>, key: &[u8], range_end: &[u8], write: bool) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let u = self.users.get(name).ok_or(AuthError::PermissionDenied)?;
        if self.has_root(u) {
            return Ok(());
        }
        let wanted = if write { PermType::Write } else { PermType::Read };
        let granted: Vec<Interval> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .filter(|p| p.perm_type == wanted as i32 || p.perm_type == PermType::Readwrite as i32)
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        if covered(&interval(key, range_end), granted) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Every key a Txn compares, reads or writes, in both branches and nested Txns (etcd once
    /// shipped without the nested check).
    pub fn check_txn(&self, user: Option<&str>, t: &TxnRequest) -> Result<(), AuthError> {
        for c in &t.compare {
            self.check_range(user, &c.key, &c.range_end, false)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            self.check_request_op(user, op)?;
        }
        Ok(())
    }

    fn check_request_op(&self, user: Option<&str>, op: &RequestOp) -> Result<(), AuthError> {
        match &op.request {
            Some(Request::RequestRange(r)) => self.check_range(user, &r.key, &r.range_end, false),
            Some(Request::RequestPut(p)) => {
                self.check_range(user, &p.key, b"", true)?;
                if p.prev_kv {
                    self.check_range(user, &p.key, b"", false)?;
                }
                Ok(())
            }
            Some(Request::RequestDeleteRange(d)) => {
                self.check_range(user, &d.key, &d.range_end, true)?;
                if d.prev_kv {
                    self.check_range(user, &d.key, &d.range_end, false)?;
                }
                Ok(())
            }
            Some(Request::RequestTxn(t)) => self.check_txn(user, t),
            None => Ok(()),
        }
    }

    /// Applies a change `user` asked for. Errors leave the store as it was.
    pub fn step(&mut self, change: &AuthChange, user: Option<&str>) -> Result<(), AuthError> {
        let Some(change) = &change.change else { return Err(AuthError::InvalidAuthManagement) };
        if !matches!(change, Change::Enable(_)) {
            self.check_admin(user)?;
        }
        match change {
            Change::Enable(_) => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !self.has_root(root) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                return Ok(());
            }
            Change::Disable(_) => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            Change::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExists);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let hashed_password = if no_password { String::new() } else { r.hashed_password.clone() };
                self.users.insert(r.name.clone(), User { hashed_password, roles: BTreeSet::new(), no_password });
            }
            Change::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidAuthManagement);
                }
                self.users.remove(&r.name).ok_or(AuthError::UserNotFound)?;
            }
            Change::UserChangePassword(r) => {
                let u = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                if u.no_password {
                    return Err(AuthError::NoPasswordUser);
                }
                u.hashed_password = r.hashed_password.clone();
            }
            Change::UserGrantRole(r) => {
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    if !self.users.contains_key(&r.user) {
                        return Err(AuthError::UserNotFound);
                    }
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(&r.user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.insert(r.role.clone()) {
                    return Ok(()); // granted already: etcd ignores it
                }
            }
            Change::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidAuthManagement);
                }
                let u = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(&r.role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            Change::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExists);
                }
                self.roles.insert(r.name.clone(), Vec::new());
            }
            Change::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidAuthManagement);
                }
                self.roles.remove(&r.role).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(&r.role);
                }
            }
            Change::RoleGrantPermission(r) => {
                let perms = self.roles.get_mut(&r.name).ok_or(AuthError::RoleNotFound)?;
                let Some(p) = &r.perm else { return Err(AuthError::PermissionNotGranted) };
                match perms.binary_search_by(|q| (&q.key, &q.range_end).cmp(&(&p.key, &p.range_end))) {
                    Ok(i) => perms[i].perm_type = p.perm_type,
                    Err(i) => perms.insert(i, p.clone()),
                }
            }
            Change::RoleRevokePermission(r) => {
                let perms = self.roles.get_mut(&r.role).ok_or(AuthError::RoleNotFound)?;
                let before = perms.len();
                perms.retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::authpb::UserAddOptions;
    use bftcd_proto::etcdserverpb::*;

    fn change(c: Change) -> AuthChange {
        AuthChange { change: Some(c) }
    }
    fn add_user(s: &mut AuthStore, name: &str, by: Option<&str>) -> Result<(), AuthError> {
        s.step(&change(Change::UserAdd(AuthUserAddRequest { name: name.into(), hashed_password: "h".into(), ..Default::default() })), by)
    }
    fn grant_role(s: &mut AuthStore, user: &str, role: &str, by: Option<&str>) -> Result<(), AuthError> {
        s.step(&change(Change::UserGrantRole(AuthUserGrantRoleRequest { user: user.into(), role: role.into() })), by)
    }
    fn grant_perm(s: &mut AuthStore, role: &str, t: PermType, key: &[u8], end: &[u8]) {
        let perm = Permission { perm_type: t as i32, key: key.to_vec(), range_end: end.to_vec() };
        s.step(&change(Change::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: role.into(), perm: Some(perm) })), Some(ROOT))
            .unwrap();
    }

    /// root, and alice with read-write on /a/ and read on /ro/, auth enabled.
    fn store() -> AuthStore {
        let mut s = AuthStore::default();
        assert_eq!(s.step(&change(Change::Enable(AuthEnableRequest {})), None), Err(AuthError::RootUserNotExist));
        add_user(&mut s, ROOT, None).unwrap();
        assert_eq!(s.step(&change(Change::Enable(AuthEnableRequest {})), None), Err(AuthError::RootRoleNotExist));
        grant_role(&mut s, ROOT, ROOT, None).unwrap();
        add_user(&mut s, "alice", None).unwrap();
        s.step(&change(Change::RoleAdd(AuthRoleAddRequest { name: "r".into() })), None).unwrap();
        grant_role(&mut s, "alice", "r", None).unwrap();
        s.step(&change(Change::Enable(AuthEnableRequest {})), None).unwrap();
        grant_perm(&mut s, "r", PermType::Readwrite, b"/a/", b"/a0");
        grant_perm(&mut s, "r", PermType::Read, b"/ro/", b"/ro0");
        s
    }

    #[test]
    fn management_needs_root_once_enabled() {
        let mut s = store();
        assert!(s.enabled());
        assert_eq!(add_user(&mut s, "bob", Some("alice")), Err(AuthError::PermissionDenied));
        assert_eq!(add_user(&mut s, "bob", None), Err(AuthError::UserEmpty));
        assert_eq!(add_user(&mut s, "bob", Some("nobody")), Err(AuthError::UserNotFound));
        let rev = s.revision();
        add_user(&mut s, "bob", Some(ROOT)).unwrap();
        assert_eq!(s.revision(), rev + 1);
        assert_eq!(AuthStore::default().revision(), 1, "a fresh store is at 1, as etcd's");
        assert_eq!(add_user(&mut s, "bob", Some(ROOT)), Err(AuthError::UserAlreadyExists));
        assert_eq!(grant_role(&mut s, "bob", "nosuch", Some(ROOT)), Err(AuthError::RoleNotFound));
        let revoke = |s: &mut AuthStore, name: &str, role: &str| {
            s.step(&change(Change::UserRevokeRole(AuthUserRevokeRoleRequest { name: name.into(), role: role.into() })), Some(ROOT))
        };
        assert_eq!(revoke(&mut s, "bob", "r"), Err(AuthError::RoleNotGranted));
        assert_eq!(revoke(&mut s, ROOT, ROOT), Err(AuthError::InvalidAuthManagement));
        let del = |s: &mut AuthStore, name: &str| s.step(&change(Change::UserDelete(AuthUserDeleteRequest { name: name.into() })), Some(ROOT));
        assert_eq!(del(&mut s, ROOT), Err(AuthError::InvalidAuthManagement));
        assert_eq!(del(&mut s, "nosuch"), Err(AuthError::UserNotFound));
        let nopw = AuthUserAddRequest { name: "cn".into(), options: Some(UserAddOptions { no_password: true }), ..Default::default() };
        s.step(&change(Change::UserAdd(nopw)), Some(ROOT)).unwrap();
        assert!(s.user("cn").unwrap().hashed_password.is_empty());
        s.step(&change(Change::Disable(AuthDisableRequest {})), Some(ROOT)).unwrap();
        assert!(!s.enabled());
        assert_eq!(add_user(&mut s, "carol", None), Ok(()), "anyone manages while auth is off");
    }

    #[test]
    fn ranges_must_be_covered_by_the_users_permissions() {
        let s = store();
        let alice = Some("alice");
        assert_eq!(s.check_range(alice, b"/a/x", b"", true), Ok(()));
        assert_eq!(s.check_range(alice, b"/a/", b"/a0", false), Ok(()));
        assert_eq!(s.check_range(alice, b"/a/", b"/b", false), Err(AuthError::PermissionDenied), "beyond the prefix");
        assert_eq!(s.check_range(alice, b"/ro/x", b"", false), Ok(()));
        assert_eq!(s.check_range(alice, b"/ro/x", b"", true), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(alice, b"\0", b"\0", true), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(Some(ROOT), b"\0", b"\0", true), Ok(()));
        assert_eq!(s.check_range(None, b"/a/x", b"", false), Err(AuthError::UserEmpty));
        assert_eq!(s.check_range(Some("ghost"), b"/a/x", b"", false), Err(AuthError::PermissionDenied));
        // Two adjacent grants cover a range across both.
        let mut s2 = store();
        grant_perm(&mut s2, "r", PermType::Read, b"/a0", b"/c");
        assert_eq!(s2.check_range(alice, b"/a/", b"/b", false), Ok(()));
        assert_eq!(s2.check_range(alice, b"/a/", b"/d", false), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn every_part_of_a_txn_is_checked_nested_ones_too() {
        let s = store();
        let put = |k: &[u8]| RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.to_vec(), ..Default::default() })) };
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest { compare: vec![], success, failure };
        let alice = Some("alice");
        assert_eq!(s.check_txn(alice, &txn(vec![put(b"/a/1")], vec![])), Ok(()));
        assert_eq!(s.check_txn(alice, &txn(vec![put(b"/a/1")], vec![put(b"/b")])), Err(AuthError::PermissionDenied));
        let nested = RequestOp { request: Some(Request::RequestTxn(txn(vec![], vec![put(b"/b")]))) };
        assert_eq!(s.check_txn(alice, &txn(vec![nested], vec![])), Err(AuthError::PermissionDenied), "nested Txn");
        let cmp = Compare { key: b"/secret".to_vec(), ..Default::default() };
        assert_eq!(s.check_txn(alice, &TxnRequest { compare: vec![cmp], success: vec![], failure: vec![] }), Err(AuthError::PermissionDenied));
        let prev = RequestOp { request: Some(Request::RequestPut(PutRequest { key: b"/ro/x".to_vec(), prev_kv: true, ..Default::default() })) };
        assert_eq!(s.check_txn(alice, &txn(vec![prev], vec![])), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn permissions_are_kept_sorted_and_revoked_exactly() {
        let mut s = store();
        let revoke = |s: &mut AuthStore, key: &[u8], end: &[u8]| {
            let r = AuthRoleRevokePermissionRequest { role: "r".into(), key: key.to_vec(), range_end: end.to_vec() };
            s.step(&change(Change::RoleRevokePermission(r)), Some(ROOT))
        };
        assert_eq!(revoke(&mut s, b"/a/", b""), Err(AuthError::PermissionNotGranted));
        revoke(&mut s, b"/a/", b"/a0").unwrap();
        assert_eq!(s.role("r").unwrap().len(), 1);
        assert_eq!(s.check_range(Some("alice"), b"/a/x", b"", true), Err(AuthError::PermissionDenied));
        s.step(&change(Change::RoleDelete(AuthRoleDeleteRequest { role: "r".into() })), Some(ROOT)).unwrap();
        assert!(s.user("alice").unwrap().roles.is_empty());
    }
}
