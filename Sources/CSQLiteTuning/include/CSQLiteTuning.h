#ifndef CSQLITETUNING_H
#define CSQLITETUNING_H

/* sqlite3_config is variadic, which Swift cannot call: these wrap the settings EntitySync uses. */

/* Turns off SQLite's process-wide memory statistics, whose mutex every allocation of every
   connection takes. Only effective before SQLite is initialised (the first connection opened);
   returns SQLITE_OK, or SQLITE_MISUSE if it came too late. */
int entitysync_sqlite_disable_memory_statistics(void);

#endif
