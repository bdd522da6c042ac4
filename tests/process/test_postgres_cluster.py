"""The throw-away PostgreSQL server the PostgreSQL backend's tests run against."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.postgres_cluster import new_cluster, shared_cluster


class PostgresClusterTests(SynchronousTestCase):
    def test_each_database_is_new_and_usable(self) -> None:
        import psycopg

        cluster = shared_cluster(self)
        first, second = cluster.create_database(), cluster.create_database()
        self.assertNotEqual(first, second)
        with psycopg.connect(first) as connection:
            connection.execute("CREATE TABLE t (x integer)")
            connection.execute("INSERT INTO t VALUES (41)")
            self.assertEqual(connection.execute("SELECT x + 1 FROM t").fetchone(), (42,))
        with psycopg.connect(second) as connection:
            self.assertIsNone(connection.execute("SELECT to_regclass('t')").fetchone()[0])  # type: ignore[index]

    def test_a_server_of_its_own_stops_and_starts_again_with_its_data(self) -> None:
        import psycopg

        cluster = new_cluster(self)
        url = cluster.create_database()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (x integer)")
            connection.execute("INSERT INTO kept VALUES (7)")
        cluster.stop()
        with self.assertRaises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        cluster.start()
        with psycopg.connect(url) as connection:
            self.assertEqual(connection.execute("SELECT x FROM kept").fetchone(), (7,))
