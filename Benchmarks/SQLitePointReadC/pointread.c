/* The SQLite part of a GetUser, alone: the statement user-rpc's point reader runs (the user and
 * its live groups in one UNION ALL), prepared once, stepped COUNT times on a read-only
 * connection, with a read transaction per PER_TRANSACTION reads as the server shares one among
 * the calls of a socket read. Prints the CPU time per read: with the C gRPC server's CPU per
 * call, the floor under user-rpc's GetUser on this machine.
 *
 * usage: pointread DATABASE ID COUNT PER_TRANSACTION
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static void check(int result, sqlite3 *db, const char *what) {
    if (result != SQLITE_OK && result != SQLITE_DONE && result != SQLITE_ROW) {
        fprintf(stderr, "pointread: %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: pointread DATABASE ID COUNT PER_TRANSACTION\n");
        return 2;
    }
    const char *id = argv[2];
    long count = atol(argv[3]), per = atol(argv[4]);
    if (count <= 0 || per <= 0) {
        fprintf(stderr, "pointread: COUNT and PER_TRANSACTION must be positive\n");
        return 2;
    }
    /* As user-rpc: no memory statistics (their mutex costs a lock per allocation). */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    sqlite3 *db = NULL;
    check(sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL), db, "open");
    const char *sql =
        "SELECT 0, deleted, state FROM entities WHERE kind = 'user' AND id = ?1 "
        "UNION ALL "
        "SELECT 1, 0, state FROM (SELECT e.state FROM group_members m "
        "JOIN entities e ON e.kind = 'group' AND e.id = m.group_id "
        "WHERE m.user_id = ?1 AND e.deleted = 0 ORDER BY m.group_id LIMIT ?2)";
    sqlite3_stmt *read = NULL, *begin = NULL, *commit = NULL;
    check(sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &read, NULL), db, "prepare the read");
    check(sqlite3_prepare_v3(db, "BEGIN", -1, SQLITE_PREPARE_PERSISTENT, &begin, NULL), db, "prepare BEGIN");
    check(sqlite3_prepare_v3(db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &commit, NULL), db, "prepare COMMIT");
    long rows = 0, bytes = 0;
    double started = cpu_seconds();
    for (long index = 0; index < count; index++) {
        if (index % per == 0) { check(sqlite3_step(begin), db, "BEGIN"); sqlite3_reset(begin); }
        sqlite3_bind_text(read, 1, id, (int)strlen(id), SQLITE_STATIC);
        sqlite3_bind_int64(read, 2, 100);
        int result;
        while ((result = sqlite3_step(read)) == SQLITE_ROW) {
            rows++;
            bytes += sqlite3_column_bytes(read, 2);
        }
        check(result, db, "read");
        sqlite3_reset(read);
        if (index % per == per - 1 || index == count - 1) { check(sqlite3_step(commit), db, "COMMIT"); sqlite3_reset(commit); }
    }
    double elapsed = cpu_seconds() - started;
    if (rows == 0) {
        fprintf(stderr, "pointread: no rows for '%s': is it a user-rpc replica holding that user?\n", id);
        return 1;
    }
    printf("reads=%ld rows=%ld bytes=%ld cpu_us_per_read=%.3f reads_per_s=%.0f\n", count, rows, bytes,
           elapsed / (double)count * 1e6, (double)count / elapsed);
    sqlite3_close(db);
    return 0;
}
