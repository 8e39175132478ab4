// The anchor for catch-up: how fast plain C over librabbitmq drains a quorum queue, with the
// prefetch and ack-multiple a tuned consumer uses and no work per message. `scripts/bench catchup`
// reports EntitySync's catch-up as a ratio to this, measured in the same run.
//
//   amqp-drain-bench-c HOST PORT COUNT SIZE PREFETCH ACK_EVERY
//
// Fills a fresh durable quorum queue with COUNT persistent messages of SIZE bytes (confirmed),
// then consumes them all, acking every ACK_EVERY deliveries with `multiple`, and prints the
// drain rate. The queue is deleted afterwards.
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
        fprintf(stderr, "amqp-drain-bench-c: %s failed (reply type %d, library error %s)\n", what, reply.reply_type,
                amqp_error_string2(reply.library_error));
        exit(1);
    }
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(amqp_connection_state_t conn, const char *queue, long count, long size) {
    amqp_confirm_select(conn, 1);
    die_on_reply(amqp_get_rpc_reply(conn), "confirm.select");
    char *body = malloc(size);
    memset(body, 'a', size);
    amqp_bytes_t body_bytes = {.len = size, .bytes = body};
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/octet-stream");
    props.delivery_mode = 2;
    uint64_t sent = 0, confirmed = 0;
    while (confirmed < (uint64_t)count) {
        while (sent < (uint64_t)count && sent - confirmed < 512) {
            if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 1, 0, &props, body_bytes) !=
                AMQP_STATUS_OK) {
                fprintf(stderr, "amqp-drain-bench-c: publish failed\n");
                exit(1);
            }
            sent++;
        }
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) {
            fprintf(stderr, "amqp-drain-bench-c: connection lost while filling\n");
            exit(1);
        }
        if (frame.frame_type != AMQP_FRAME_METHOD) continue;
        if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *ack = frame.payload.method.decoded;
            if (ack->multiple) confirmed = ack->delivery_tag;
            else confirmed++;
        } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD || frame.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
            fprintf(stderr, "amqp-drain-bench-c: broker nacked or returned a message\n");
            exit(1);
        }
        amqp_maybe_release_buffers(conn);
    }
    free(body);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: amqp-drain-bench-c HOST PORT COUNT SIZE PREFETCH ACK_EVERY\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    long count = atol(argv[3]);
    long size = atol(argv[4]);
    long prefetch = atol(argv[5]);
    long ack_every = atol(argv[6]);
    if (port <= 0 || count <= 0 || size <= 0 || prefetch <= 0 || prefetch > 65535 || ack_every <= 0) {
        fprintf(stderr, "amqp-drain-bench-c: PORT, COUNT, SIZE, ACK_EVERY must be positive, PREFETCH 1-65535\n");
        return 2;
    }
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) {
        fprintf(stderr, "amqp-drain-bench-c: cannot connect to %s:%d\n", host, port);
        return 1;
    }
    die_on_reply(amqp_login(conn, "/", 0, 131072, 10, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
    // Channel 1 fills (confirm mode), channel 2 drains.
    amqp_channel_open(conn, 1);
    die_on_reply(amqp_get_rpc_reply(conn), "channel.open");
    amqp_channel_open(conn, 2);
    die_on_reply(amqp_get_rpc_reply(conn), "channel.open");

    char queue[64];
    snprintf(queue, sizeof queue, "bench_drain_c_%d", (int)getpid());
    amqp_table_entry_t entry = {.key = amqp_cstring_bytes("x-queue-type"),
                                .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("quorum")}};
    amqp_table_t arguments = {.num_entries = 1, .entries = &entry};
    amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, arguments);
    die_on_reply(amqp_get_rpc_reply(conn), "queue.declare");
    fill(conn, queue, count, size);

    amqp_basic_qos(conn, 2, 0, (uint16_t)prefetch, 0);
    die_on_reply(amqp_get_rpc_reply(conn), "basic.qos");
    double start = now_seconds();
    amqp_basic_consume(conn, 2, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    die_on_reply(amqp_get_rpc_reply(conn), "basic.consume");
    long received = 0;
    uint64_t last_tag = 0;
    while (received < count) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t reply = amqp_consume_message(conn, &envelope, NULL, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
                amqp_frame_t frame;  // a confirm for the fill channel, or similar: skip it
                if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) break;
                continue;
            }
            fprintf(stderr, "amqp-drain-bench-c: consume failed (reply type %d)\n", reply.reply_type);
            return 1;
        }
        received++;
        last_tag = envelope.delivery_tag;
        if (received % ack_every == 0 || received == count) amqp_basic_ack(conn, 2, last_tag, 1);
        amqp_destroy_envelope(&envelope);
    }
    double seconds = now_seconds() - start;
    printf("client=c-drain queue=quorum prefetch=%ld ack_every=%ld size=%ld count=%ld seconds=%.3f rate=%.0f msg/s\n",
           prefetch, ack_every, size, count, seconds, count / seconds);
    amqp_queue_delete(conn, 1, amqp_cstring_bytes(queue), 0, 0);
    amqp_channel_close(conn, 2, AMQP_REPLY_SUCCESS);
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    return 0;
}
