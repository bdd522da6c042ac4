"""Token ids are passed as command arguments: none may read as an option."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tlsotp.ttp.tokens import Token


class TokenIdTests(SynchronousTestCase):
    def test_no_generated_id_starts_with_a_dash(self) -> None:
        # One id in 64 would start with "-" if drawn plainly: 3,000 draws find one all but surely.
        ids = [Token.generate().token_id for _ in range(3000)]
        self.assertEqual([token_id for token_id in ids if token_id.startswith("-")], [])
        self.assertEqual(len(set(ids)), len(ids))
        for token_id in ids[:50]:
            self.assertEqual(Token.parse(str(Token(token_id, b"\x00" * 32))).token_id, token_id)
