"""Security: identities and TLS material, topic access control, payload crypto, key lifecycle,
package signing, access policies, the audit log.

Sits below ``iot`` and ``services``: its modules depend only on the standard library,
``cryptography``, ``openfeeder.errors`` and ``openfeeder.config``. Import the module you need
(``openfeeder.security.pki``, ``openfeeder.security.tls``, ``openfeeder.security.acl``, ...); this
package imports none of them eagerly, so loading one never pays for the others.
"""
