"""``--database``: a PostgreSQL URL without a password; the password only from a file."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tlsotp.database_url import DatabaseURLError, parse_database_url


class DatabaseURLTests(SynchronousTestCase):
    def test_a_url_without_password_is_kept_as_given(self) -> None:
        target = parse_database_url("postgresql://bank@db.example:5432/otp")
        self.assertEqual(target.conninfo(), "postgresql://bank@db.example:5432/otp")
        self.assertEqual(target.describe(), "postgresql://bank@db.example:5432/otp")

    def test_a_password_in_the_url_is_refused(self) -> None:
        for url in ("postgresql://bank:s3cret@db/otp", "postgresql://bank@db/otp?password=s3cret",
                    "postgresql://bank@db/otp?PASSWORD=s3cret"):
            with self.assertRaises(DatabaseURLError) as caught:
                parse_database_url(url)
            self.assertNotIn("s3cret", str(caught.exception))
            self.assertIn("--database-password-file", str(caught.exception))

    def test_other_schemes_and_control_characters_are_refused(self) -> None:
        for url in ("sqlite:///tmp/x", "mysql://db/otp", "postgresql://db/otp\n", ""):
            self.assertRaises(DatabaseURLError, parse_database_url, url)

    def test_the_password_comes_from_the_file_and_stays_out_of_describe(self) -> None:
        path = Path(self.mktemp())
        path.write_text("p'w \\x\n")
        target = parse_database_url("postgresql://bank@/otp?host=/run/pg", path)
        self.assertEqual(target.password, "p'w \\x")
        self.assertNotIn("p'w", target.describe())
        import psycopg.conninfo

        self.assertEqual(psycopg.conninfo.conninfo_to_dict(target.conninfo())["password"], "p'w \\x")

    def test_an_empty_missing_or_huge_password_file_is_one_clear_error(self) -> None:
        empty = Path(self.mktemp())
        empty.write_text("\n")
        huge = Path(self.mktemp())
        huge.write_bytes(b"x" * 5000)
        for path, words in ((empty, "empty"), (Path(self.mktemp()), "cannot read"), (huge, "longer")):
            with self.assertRaises(DatabaseURLError) as caught:
                parse_database_url("postgresql://bank@db/otp", path)
            self.assertIn(words, str(caught.exception))
