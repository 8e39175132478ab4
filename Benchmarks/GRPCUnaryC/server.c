/*
 * grpc-unary-c: the C anchor for `scripts/bench query`. A unary gRPC server on libnghttp2's
 * session API: one thread, epoll, cleartext HTTP/2 with prior knowledge (h2c, no upgrade, no TLS).
 * It does no work per call beyond HTTP/2 itself: every request on
 *
 *   /entitysync.v1.UserQuery/GetUser   gets the same UserWithGroups (the request is not decoded)
 *   /grpc.health.v1.Health/Check       gets HealthCheckResponse{status: SERVING}
 *
 * as one length-prefixed gRPC message after `:status 200`, `content-type: application/grpc`,
 * followed by the trailer `grpc-status: 0`. Any other path gets a trailers-only UNIMPLEMENTED (12).
 *
 *   build: cc -O2 -o grpc-unary-c server.c $(pkg-config --cflags --libs libnghttp2)
 *   run:   grpc-unary-c PORT        (listens on 127.0.0.1:PORT until killed)
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

/*
 * The replies, serialized by hand (protobuf wire format: a key byte is field_number << 3 | wire
 * type, 0 = varint, 2 = length-delimited). They are the bytes Python's protobuf gives for
 *
 *   UserWithGroups(user=User(id="u1", name="User 1", email="u1@example.com",
 *                            status=USER_STATUS_ACTIVE, version=1),
 *                  groups=[Group(id="g1", name="Group 1", member_ids=["u1"], version=1)])
 *   HealthCheckResponse(status=SERVING)
 *
 * and `scripts/bench query` checks that a grpcio client decodes them before it measures anything.
 * Each starts with the 5-byte gRPC prefix: flag 0 (not compressed), then the length, big-endian.
 */
static const uint8_t get_user_reply[] = {
    0x00, 0x00, 0x00, 0x00, 55,                 /* gRPC prefix: 55 bytes of message */
    0x0a, 32,                                   /* UserWithGroups.user (1), 32 bytes */
    0x0a, 2, 'u', '1',                          /*   User.id (1) */
    0x12, 6, 'U', 's', 'e', 'r', ' ', '1',      /*   User.name (2) */
    0x1a, 14, 'u', '1', '@', 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm', /* User.email (3) */
    0x20, 1,                                    /*   User.status (4) = USER_STATUS_ACTIVE */
    0x30, 1,                                    /*   User.version (6) = 1 */
    0x12, 19,                                   /* UserWithGroups.groups (2), 19 bytes */
    0x0a, 2, 'g', '1',                          /*   Group.id (1) */
    0x12, 7, 'G', 'r', 'o', 'u', 'p', ' ', '1', /*   Group.name (2) */
    0x22, 2, 'u', '1',                          /*   Group.member_ids (4) */
    0x28, 1,                                    /*   Group.version (5) = 1 */
};
static const uint8_t health_reply[] = {
    0x00, 0x00, 0x00, 0x00, 2, /* gRPC prefix: 2 bytes of message */
    0x08, 1,                   /* HealthCheckResponse.status (1) = SERVING */
};

enum method { METHOD_UNKNOWN, METHOD_GET_USER, METHOD_HEALTH_CHECK };

struct stream {
    enum method method;
    const uint8_t *reply;
    size_t length, sent;
    struct stream *previous, *next; /* the connection's open streams, freed with it */
};

struct connection {
    int fd;
    nghttp2_session *session;
    struct stream *streams;
    uint8_t *out; /* bytes nghttp2 produced that the socket has not taken yet */
    size_t out_length, out_capacity;
    int want_epollout;
};

#define NV(name, value) \
    { (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, sizeof(value) - 1, \
      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE }
static const nghttp2_nv response_headers[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
static const nghttp2_nv ok_trailers[] = {NV("grpc-status", "0")};
static const nghttp2_nv unimplemented_headers[] = {
    NV(":status", "200"), NV("content-type", "application/grpc"), NV("grpc-status", "12"),
    NV("grpc-message", "unknown method")};

static int epoll_fd;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static ssize_t read_reply(nghttp2_session *session, int32_t stream_id, uint8_t *buffer, size_t length,
                          uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    (void)user_data;
    struct stream *stream = source->ptr;
    size_t count = stream->length - stream->sent;
    if (count > length) count = length;
    memcpy(buffer, stream->reply + stream->sent, count);
    stream->sent += count;
    if (stream->sent == stream->length) {
        /* End the DATA without END_STREAM; the trailers HEADERS frame carries END_STREAM. */
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(session, stream_id, ok_trailers, 1) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)count;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    struct connection *connection = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    struct stream *stream = calloc(1, sizeof *stream);
    if (stream == NULL) return NGHTTP2_ERR_CALLBACK_FAILURE;
    stream->next = connection->streams;
    if (stream->next != NULL) stream->next->previous = stream;
    connection->streams = stream;
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, stream);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
    (void)flags, (void)user_data;
    static const char get_user[] = "/entitysync.v1.UserQuery/GetUser";
    static const char health[] = "/grpc.health.v1.Health/Check";
    if (frame->hd.type != NGHTTP2_HEADERS || namelen != 5 || memcmp(name, ":path", 5) != 0) return 0;
    struct stream *stream = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (stream == NULL) return 0;
    if (valuelen == sizeof get_user - 1 && memcmp(value, get_user, valuelen) == 0) {
        stream->method = METHOD_GET_USER;
    } else if (valuelen == sizeof health - 1 && memcmp(value, health, valuelen) == 0) {
        stream->method = METHOD_HEALTH_CHECK;
    }
    return 0;
}

/* The request is complete (END_STREAM on its HEADERS or last DATA): answer it. The body (a
 * GetRequest or HealthCheckRequest) arrives through on_data_chunk_recv, which is not set: the
 * replies do not depend on it. */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    (void)user_data;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    int32_t id = frame->hd.stream_id;
    struct stream *stream = nghttp2_session_get_stream_user_data(session, id);
    if (stream == NULL) return 0;
    if (stream->method == METHOD_UNKNOWN) {
        return nghttp2_submit_response(session, id, unimplemented_headers, 4, NULL) == 0 ? 0
                                                                                     : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    stream->reply = stream->method == METHOD_GET_USER ? get_user_reply : health_reply;
    stream->length = stream->method == METHOD_GET_USER ? sizeof get_user_reply : sizeof health_reply;
    nghttp2_data_provider provider = {.source = {.ptr = stream}, .read_callback = read_reply};
    return nghttp2_submit_response(session, id, response_headers, 2, &provider) == 0 ? 0
                                                                                     : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data) {
    (void)error_code;
    struct connection *connection = user_data;
    struct stream *stream = nghttp2_session_get_stream_user_data(session, stream_id);
    if (stream == NULL) return 0;
    if (stream->previous != NULL) stream->previous->next = stream->next;
    else connection->streams = stream->next;
    if (stream->next != NULL) stream->next->previous = stream->previous;
    free(stream);
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    return 0;
}

static void close_connection(struct connection *connection) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, connection->fd, NULL);
    close(connection->fd);
    nghttp2_session_del(connection->session); /* does not call on_stream_close */
    while (connection->streams != NULL) {
        struct stream *next = connection->streams->next;
        free(connection->streams);
        connection->streams = next;
    }
    free(connection->out);
    free(connection);
}

/* Moves what nghttp2 wants to send into the connection's buffer, and the buffer into the socket.
 * Returns -1 when the connection should close. */
static int flush(struct connection *connection) {
    for (;;) {
        while (connection->out_length < 65536) {
            const uint8_t *data;
            ssize_t count = nghttp2_session_mem_send(connection->session, &data);
            if (count < 0) return -1;
            if (count == 0) break;
            if (connection->out_length + (size_t)count > connection->out_capacity) {
                size_t capacity = connection->out_capacity ? connection->out_capacity : 16384;
                while (capacity < connection->out_length + (size_t)count) capacity *= 2;
                uint8_t *grown = realloc(connection->out, capacity);
                if (grown == NULL) return -1;
                connection->out = grown, connection->out_capacity = capacity;
            }
            memcpy(connection->out + connection->out_length, data, (size_t)count);
            connection->out_length += (size_t)count;
        }
        if (connection->out_length == 0) break;
        ssize_t written = send(connection->fd, connection->out, connection->out_length, MSG_NOSIGNAL);
        if (written < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return -1;
        }
        memmove(connection->out, connection->out + written, connection->out_length - (size_t)written);
        connection->out_length -= (size_t)written;
    }
    int want_epollout = connection->out_length > 0;
    if (want_epollout != connection->want_epollout) {
        struct epoll_event event = {.events = EPOLLIN | (want_epollout ? EPOLLOUT : 0), .data.ptr = connection};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, connection->fd, &event) != 0) return -1;
        connection->want_epollout = want_epollout;
    }
    if (connection->out_length == 0 && !nghttp2_session_want_read(connection->session) &&
        !nghttp2_session_want_write(connection->session))
        return -1;
    return 0;
}

static int receive(struct connection *connection) {
    uint8_t buffer[65536];
    for (;;) {
        ssize_t count = recv(connection->fd, buffer, sizeof buffer, 0);
        if (count == 0) return -1;
        if (count < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        if (nghttp2_session_mem_recv(connection->session, buffer, (size_t)count) < 0) return -1;
        if ((size_t)count < sizeof buffer) return 0;
    }
}

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;

static void accept_connections(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct connection *connection = calloc(1, sizeof *connection);
        if (connection == NULL || nghttp2_session_server_new2(&connection->session, callbacks, connection, options) != 0) {
            free(connection);
            close(fd);
            continue;
        }
        connection->fd = fd;
        nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 256},
                                             {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 16384}};
        nghttp2_submit_settings(connection->session, NGHTTP2_FLAG_NONE, settings, 2);
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = connection};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0 || flush(connection) != 0) close_connection(connection);
    }
}

int main(int argc, char **argv) {
    if (argc != 2 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_option_new(&options);
    nghttp2_option_set_max_settings(options, 32);
    nghttp2_option_set_max_outbound_ack(options, 1000);
    nghttp2_option_set_stream_reset_rate_limit(options, 1000, 33);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0) die("bind");
    if (listen(listener, 1024) != 0) die("listen");
    if ((epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL marks the listener */
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event) != 0) die("epoll_ctl");

    struct epoll_event events[64];
    for (;;) {
        int count = epoll_wait(epoll_fd, events, 64, -1);
        if (count < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int index = 0; index < count; index++) {
            struct connection *connection = events[index].data.ptr;
            if (connection == NULL) {
                accept_connections(listener);
                continue;
            }
            int failed = (events[index].events & (EPOLLERR | EPOLLHUP)) && !(events[index].events & EPOLLIN);
            if (!failed && (events[index].events & EPOLLIN)) failed = receive(connection) != 0;
            /* Flush even after a failed read: a GOAWAY nghttp2 queued is worth trying to send. */
            if (flush(connection) != 0 || failed) close_connection(connection);
        }
    }
}
