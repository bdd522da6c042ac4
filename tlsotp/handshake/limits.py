"""Every size and count the handshake and record layer accept, in one place.

A hostile peer decides what arrives; these bounds decide how much work and memory it can
make us spend. Exceeding a size is ``record_overflow`` (records) or ``decode_error``
(handshake fields); the shell's netstring decoder (``tlsotp.framing``) is bounded by ``MAX_FRAME``.
"""

from __future__ import annotations

from typing import Final

#: Protocol versions this implementation speaks ("tlsotp/1").
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (1,)

#: Largest frame (content type byte + body) either side sends or accepts.
MAX_FRAME: Final = 16384

#: Largest application plaintext in one record; longer writes are split.
MAX_PLAINTEXT: Final = 8192

#: AEAD tag length shared by AES-GCM and ChaCha20-Poly1305.
AEAD_TAG_LENGTH: Final = 16

#: Records per direction before the connection must close. No key update exists, so this is
#: the AES-GCM usage bound of RFC 8446 section 5.5 (2^24.5 full records), rounded down; it also
#: keeps the 64-bit sequence number far from wrapping.
RECORD_LIMIT: Final = 2**24

#: Certificates in one chain (leaf first, root excluded or included).
MAX_CHAIN: Final = 4

#: Bytes in one DER certificate.
MAX_CERTIFICATE_SIZE: Final = 8192

#: Cipher suites one ClientHello may offer.
MAX_SUITES: Final = 64

#: Protocol versions one ClientHello may offer.
MAX_VERSIONS: Final = 16

#: Key shares one ClientHello may carry (one per ECDHE group).
MAX_KEY_SHARES: Final = 8

#: Bytes in one key share (an uncompressed P-384 point is 97).
MAX_KEY_SHARE_SIZE: Final = 133

#: Bytes in one signature (RSA-4096 is 512).
MAX_SIGNATURE_SIZE: Final = 1024

#: Bytes in one RSA-OAEP ciphertext (RSA-4096 is 512).
MAX_KEY_TRANSPORT_SIZE: Final = 1024

#: Length of each hello random.
RANDOM_LENGTH: Final = 32

#: Length of the secret the client transports under RSA-OAEP.
TRANSPORTED_SECRET_LENGTH: Final = 32
