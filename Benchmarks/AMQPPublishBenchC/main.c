// The C baseline for amqp-publish-bench: the same pipelined, confirmed publish written directly
// against librabbitmq, so the Swift client's overhead can be measured against the library itself.
//
//   amqp-publish-bench-c HOST PORT COUNT SIZE WINDOW quorum|classic
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void die_on_reply(amqp_rpc_reply_t reply, const char *what) {
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "amqp-publish-bench-c: %s failed (reply type %d, library error %s)\n", what,
                reply.reply_type, amqp_error_string2(reply.library_error));
        exit(1);
    }
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: amqp-publish-bench-c HOST PORT COUNT SIZE WINDOW quorum|classic\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    long count = atol(argv[3]);
    long size = atol(argv[4]);
    long window = atol(argv[5]);
    const char *queue_type = argv[6];
    if (port <= 0 || count <= 0 || size <= 0 || window <= 0) {
        fprintf(stderr, "amqp-publish-bench-c: PORT, COUNT, SIZE and WINDOW must be positive\n");
        return 2;
    }

    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) {
        fprintf(stderr, "amqp-publish-bench-c: cannot connect to %s:%d\n", host, port);
        return 1;
    }
    die_on_reply(amqp_login(conn, "/", 0, 131072, 10, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
    amqp_channel_open(conn, 1);
    die_on_reply(amqp_get_rpc_reply(conn), "channel.open");

    char exchange[64], queues[2][64];
    snprintf(exchange, sizeof exchange, "bench_c_%d", (int)getpid());
    snprintf(queues[0], sizeof queues[0], "%s_a", exchange);
    snprintf(queues[1], sizeof queues[1], "%s_b", exchange);
    amqp_exchange_declare(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("fanout"), 0, 1, 0, 0,
                          amqp_empty_table);
    die_on_reply(amqp_get_rpc_reply(conn), "exchange.declare");
    amqp_table_entry_t entry = {.key = amqp_cstring_bytes("x-queue-type"),
                                .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(queue_type)}};
    amqp_table_t arguments = {.num_entries = 1, .entries = &entry};
    for (int i = 0; i < 2; i++) {
        amqp_queue_declare(conn, 1, amqp_cstring_bytes(queues[i]), 0, 1, 0, 0, arguments);
        die_on_reply(amqp_get_rpc_reply(conn), "queue.declare");
        amqp_queue_bind(conn, 1, amqp_cstring_bytes(queues[i]), amqp_cstring_bytes(exchange), amqp_empty_bytes,
                        amqp_empty_table);
        die_on_reply(amqp_get_rpc_reply(conn), "queue.bind");
    }
    amqp_confirm_select(conn, 1);
    die_on_reply(amqp_get_rpc_reply(conn), "confirm.select");

    char *body = malloc(size);
    memset(body, 'a', size);
    amqp_bytes_t body_bytes = {.len = size, .bytes = body};
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                   AMQP_BASIC_TIMESTAMP_FLAG;
    props.content_type = amqp_cstring_bytes("application/octet-stream");
    props.delivery_mode = 2;
    char message_id[40];

    double start = now_seconds();
    uint64_t sent = 0, confirmed = 0;
    while (confirmed < (uint64_t)count) {
        while (sent < (uint64_t)count && sent - confirmed < (uint64_t)window) {
            snprintf(message_id, sizeof message_id, "c-%llu", (unsigned long long)sent);
            props.message_id = amqp_cstring_bytes(message_id);
            props.timestamp = (uint64_t)time(NULL);
            if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange), amqp_empty_bytes, 1, 0, &props,
                                   body_bytes) != AMQP_STATUS_OK) {
                fprintf(stderr, "amqp-publish-bench-c: publish failed\n");
                return 1;
            }
            sent++;
        }
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) {
            fprintf(stderr, "amqp-publish-bench-c: connection lost\n");
            return 1;
        }
        if (frame.frame_type != AMQP_FRAME_METHOD) continue;
        if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *ack = frame.payload.method.decoded;
            // Tags are 1-based; with `multiple` everything up to the tag is confirmed.
            if (ack->multiple) confirmed = ack->delivery_tag;
            else confirmed++;
        } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD ||
                   frame.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
            fprintf(stderr, "amqp-publish-bench-c: broker nacked or returned a message\n");
            return 1;
        }
        amqp_maybe_release_buffers(conn);
    }
    double seconds = now_seconds() - start;
    printf("client=c     queues=2x%s window=%ld size=%ld count=%ld seconds=%.2f rate=%.0f msg/s\n", queue_type,
           window, size, count, seconds, count / seconds);

    for (int i = 0; i < 2; i++) amqp_queue_delete(conn, 1, amqp_cstring_bytes(queues[i]), 0, 0);
    amqp_exchange_delete(conn, 1, amqp_cstring_bytes(exchange), 0);
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    free(body);
    return 0;
}
