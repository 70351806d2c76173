//! Control requests (RFC 8656 §7-§11): dispatch, long-term authentication and the responses.
//! The requests themselves are in `allocate.rs` (Allocate and Refresh: an allocation's life)
//! and `permission.rs` (CreatePermission and ChannelBind: who may talk through it).

use super::auth::{CredentialTag, Lookup, NonceCheck, UserId};
use super::server::Server;
use super::types::{DeleteReason, FiveTuple, Forward, Millis, Output, Transmit};
use crate::stun::attributes::{self as attr, AttributeType, ErrorCode};
use crate::stun::message::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use crate::stun::{IntegrityKey, IntegrityKind};

/// ERROR-CODE reason phrase of the 508 answering Allocate while draining, so an operator reading
/// a client's log can tell a shutdown from a full relay.
const DRAINING_REASON: &str = "Server Is Draining";

/// Comprehension-required attributes understood in TURN requests. DONT-FRAGMENT is understood
/// only when the shell can set DF (see `handle_request`).
const KNOWN_TURN: &[AttributeType] = &[
    attr::DONT_FRAGMENT,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REQUESTED_TRANSPORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::CHANNEL_NUMBER,
];

/// Comprehension-required attributes understood in Binding requests (ICE checks carry these).
const KNOWN_BINDING: &[AttributeType] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
];

/// A request that passed long-term authentication.
#[derive(Clone)]
pub(super) struct Authenticated {
    pub(super) key: IntegrityKey,
    pub(super) kind: IntegrityKind,
    pub(super) username: Box<str>,
    pub(super) user: UserId,
    pub(super) tag: CredentialTag,
    pub(super) expires: Option<Millis>,
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticated(..)")
    }
}

/// What a response needs of its request, kept when the answer is deferred.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyTo {
    pub(super) method: Method,
    pub(super) tid: TransactionId,
    /// RFC 8489 §7.3: answer with FINGERPRINT when the request used it.
    pub(super) fingerprint: bool,
}

impl ReplyTo {
    pub(super) fn of(msg: &Message<'_>) -> Self {
        Self {
            method: msg.typ.method,
            tid: msg.transaction_id,
            fingerprint: msg.has_fingerprint(),
        }
    }
}

impl Server {
    pub(super) fn handle_message<'a>(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'a>,
        now: Millis,
    ) -> Option<Forward<'a>> {
        // RFC 8489 §7.3: a wrong FINGERPRINT means the message is not STUN after all.
        if msg.has_fingerprint() && !msg.verify_fingerprint() {
            self.stats.malformed += 1;
            return None;
        }
        match msg.typ.class {
            Class::Request => {
                self.handle_request(ft, msg, now);
                None
            }
            Class::Indication if msg.typ.method == Method::SEND => self.handle_send(ft, msg, now),
            // Responses and other indications are not addressed to a server.
            _ => None,
        }
    }

    fn handle_request(&mut self, ft: FiveTuple, msg: &Message<'_>, now: Millis) {
        let method = msg.typ.method;
        let reply = ReplyTo::of(msg);
        if method == Method::BINDING {
            let unknown = msg.unknown_required(KNOWN_BINDING);
            if !unknown.is_empty() {
                return self.error(ft, reply, None, ErrorCode::UNKNOWN_ATTRIBUTE, &unknown);
            }
            return self.respond(ft, reply, Class::Success, None, |b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
            });
        }
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return self.error(ft, reply, None, ErrorCode::BAD_REQUEST, &[]);
        }
        let Some(auth) = self.authenticate(ft, msg, now) else {
            return;
        };
        // Control requests only (never the data path): the span carries the Switchboard trace
        // from the username into every log line and exported span. The user id is not logged.
        let _span = tracing::info_span!(
            "turn.request",
            method = match method {
                Method::ALLOCATE => "allocate",
                Method::REFRESH => "refresh",
                Method::CREATE_PERMISSION => "create_permission",
                _ => "channel_bind",
            },
            trace_id = super::auth::parse_rest_username(&auth.username)
                .and_then(|u| u.trace)
                .map(tracing::field::display),
        )
        .entered();
        let mut unknown = msg.unknown_required(KNOWN_TURN);
        // RFC 8656 §7.2: a server that cannot set DF treats DONT-FRAGMENT as unknown.
        if method == Method::ALLOCATE
            && msg.get(attr::DONT_FRAGMENT).is_some()
            && !self.config.dont_fragment
        {
            unknown.push(attr::DONT_FRAGMENT);
        }
        if !unknown.is_empty() {
            return self.error(
                ft,
                reply,
                Some(&auth),
                ErrorCode::UNKNOWN_ATTRIBUTE,
                &unknown,
            );
        }
        let result = match method {
            // A retransmitted Allocate of a live allocation is still answered as the first time.
            Method::ALLOCATE
                if self.draining && self.allocations.get(&ft).is_none_or(|a| a.expires <= now) =>
            {
                self.stats.quota_rejections += 1;
                return self.respond(ft, reply, Class::Error, Some(&auth), |b| {
                    b.attr(
                        attr::ERROR_CODE,
                        &attr::encode_error_code_with_reason(
                            ErrorCode::INSUFFICIENT_CAPACITY,
                            DRAINING_REASON,
                        ),
                    );
                });
            }
            Method::ALLOCATE => self.allocate(ft, msg, &auth, now),
            Method::REFRESH => self.refresh(ft, msg, &auth, now),
            Method::CREATE_PERMISSION => self.create_permission(ft, msg, &auth, now),
            _ => self.channel_bind(ft, msg, &auth, now),
        };
        if let Err(code) = result {
            self.error(ft, reply, Some(&auth), code, &[]);
        }
    }

    /// RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order.
    fn authenticate(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Millis,
    ) -> Option<Authenticated> {
        let reply = ReplyTo::of(msg);
        let Some(kind) = msg.integrity_kind() else {
            self.stats.auth_failures.missing_integrity += 1;
            self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
            return None;
        };
        let text = |t| msg.get(t).and_then(|v| attr::decode_text(v, t).ok());
        let (Some(username), Some(realm), Some(nonce)) = (
            text(attr::USERNAME),
            text(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            self.error(ft, reply, None, ErrorCode::BAD_REQUEST, &[]);
            return None;
        };
        if self.nonces.check(nonce, ft.client, now) == NonceCheck::Stale {
            self.stats.auth_failures.stale_nonce += 1;
            self.challenge(ft, reply, now, ErrorCode::STALE_NONCE);
            return None;
        }
        if realm != self.config.realm {
            self.stats.auth_failures.wrong_realm += 1;
            self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
            return None;
        }
        let (candidates, user, expires) =
            match self.credentials.lookup(username, &self.config.realm, now) {
                Lookup::Keys {
                    candidates,
                    user,
                    expires,
                } => (candidates, user, expires),
                Lookup::Expired => {
                    // The credential's lifetime bounds the allocation's: end it now.
                    self.stats.auth_failures.expired += 1;
                    self.revoke_if_owned(ft, username, false);
                    self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
                    return None;
                }
                Lookup::Unknown => {
                    self.stats.auth_failures.unknown_user += 1;
                    self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
                    return None;
                }
            };
        let Some(found) = candidates
            .into_iter()
            .find(|c| msg.verify_integrity(&c.key))
        else {
            self.stats.auth_failures.bad_integrity += 1;
            // Only an allocation already marked revoked is ended: a forged MAC must not be able
            // to tear down someone else's allocation.
            self.revoke_if_owned(ft, username, true);
            self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
            return None;
        };
        Some(Authenticated {
            key: found.key,
            kind,
            username: username.into(),
            user,
            tag: found.tag,
            expires,
        })
    }

    pub(super) fn revoke_if_owned(&mut self, ft: FiveTuple, username: &str, only_if_revoked: bool) {
        let owned = self
            .allocations
            .get(&ft)
            .is_some_and(|a| &*a.username == username && (a.revoked || !only_if_revoked));
        if owned {
            self.delete(ft, DeleteReason::Revoked);
        }
    }

    pub(super) fn respond(
        &mut self,
        ft: FiveTuple,
        reply: ReplyTo,
        class: Class,
        auth: Option<&Authenticated>,
        build: impl FnOnce(&mut MessageBuilder),
    ) {
        let mut b = MessageBuilder::new(MessageType::new(reply.method, class), reply.tid);
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        build(&mut b);
        if let Some(a) = auth {
            b.integrity(a.kind, &a.key);
        }
        if reply.fingerprint {
            b.fingerprint();
        }
        self.push(Output::Transmit(Transmit::Client {
            five_tuple: ft,
            payload: b.finish(),
        }));
    }

    pub(super) fn error(
        &mut self,
        ft: FiveTuple,
        reply: ReplyTo,
        auth: Option<&Authenticated>,
        code: ErrorCode,
        unknown: &[AttributeType],
    ) {
        self.respond(ft, reply, Class::Error, auth, |b| {
            b.error_code(code);
            if !unknown.is_empty() {
                b.unknown_attributes(unknown);
            }
        });
    }

    /// 401 or 438 carrying REALM and a fresh NONCE (RFC 8489 §9.2.4).
    pub(super) fn challenge(
        &mut self,
        ft: FiveTuple,
        reply: ReplyTo,
        now: Millis,
        code: ErrorCode,
    ) {
        let nonce = self.nonces.mint(ft.client, now);
        let realm = self.config.realm.clone();
        self.respond(ft, reply, Class::Error, None, |b| {
            b.error_code(code)
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
        });
    }
}
