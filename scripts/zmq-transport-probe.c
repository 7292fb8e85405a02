// The transport variants of docs/benchmarks.md, "Issue 11, distributed layer: the transport floor":
// a ROUTER with the coordinator's settings sends 2 DEALER processes 4 frames of 1.8 MiB each
// (7.4 MB per peer, zero-copy) and waits for both echoes; best and mean of ROUNDS-1 round trips of
// two setups, alternating in one process: setup 0 is thor's (ipc, one libzmq I/O thread, default
// socket buffers), setup 1 the variant chosen at compile time:
//   -DVARIANT_IO_THREADS   2 libzmq I/O threads in the ROUTER's context
//   -DVARIANT_BUFFER=N     ZMQ_SNDBUF/ZMQ_RCVBUF of N bytes on both ends
//   -DVARIANT_TCP          tcp://127.0.0.1 instead of ipc
// cc -O2 -DVARIANT_TCP -o probe scripts/zmq-transport-probe.c -lzmq && ./probe 40
#include <zmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/wait.h>

#define FRAMES 4
#define FRAME_BYTES (1800 * 1024)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void buffers(void *s, int variant) {
#ifdef VARIANT_BUFFER
    if (variant) { int b = VARIANT_BUFFER; zmq_setsockopt(s, ZMQ_SNDBUF, &b, sizeof b); zmq_setsockopt(s, ZMQ_RCVBUF, &b, sizeof b); }
#else
    (void)s; (void)variant;
#endif
}

static void echo(const char *endpoint, const char *id, int variant) {
    void *c = zmq_ctx_new(), *s = zmq_socket(c, ZMQ_DEALER);
    buffers(s, variant);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, id, strlen(id));
    zmq_connect(s, endpoint);
    zmq_send(s, "hi", 2, 0);
    for (;;) {
        zmq_msg_t m[FRAMES + 1];
        int n = 0, more = 1;
        while (more && n <= FRAMES) {
            zmq_msg_init(&m[n]);
            if (zmq_msg_recv(&m[n], s, 0) < 0) _exit(0);
            more = zmq_msg_more(&m[n]);
            n++;
        }
        if (zmq_msg_size(&m[0]) == 1) _exit(0);
        for (int i = 0; i < n; i++) zmq_msg_send(&m[i], s, i + 1 < n ? ZMQ_SNDMORE : 0);
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 40;
    char *payload = malloc((size_t)FRAME_BYTES * FRAMES);
    memset(payload, 1, (size_t)FRAME_BYTES * FRAMES);
    void *ctx[2], *router[2];
    char endpoint[2][128];
    for (int k = 0; k < 2; k++) {
        ctx[k] = zmq_ctx_new();
        int io = 1;
#ifdef VARIANT_IO_THREADS
        if (k) io = 2;
#endif
        zmq_ctx_set(ctx[k], ZMQ_IO_THREADS, io);
        router[k] = zmq_socket(ctx[k], ZMQ_ROUTER);
        int zero = 0;
        zmq_setsockopt(router[k], ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt(router[k], ZMQ_RCVHWM, &zero, sizeof zero);
        buffers(router[k], k);
        snprintf(endpoint[k], sizeof endpoint[k], "ipc:///tmp/thor-transport-probe-%d-%d", (int)getpid(), k);
#ifdef VARIANT_TCP
        if (k) snprintf(endpoint[k], sizeof endpoint[k], "tcp://127.0.0.1:%d", 45000 + (int)(getpid() % 1000));
#endif
        if (zmq_bind(router[k], endpoint[k]) != 0) { fprintf(stderr, "bind %s: %s\n", endpoint[k], zmq_strerror(zmq_errno())); return 1; }
        for (int w = 0; w < 2; w++) {
            if (fork() == 0) { char id[8]; snprintf(id, sizeof id, "w%d", w); echo(endpoint[k], id, k); }
        }
        for (int w = 0; w < 2; w++) { char id[8], hello[8]; zmq_recv(router[k], id, sizeof id, 0); zmq_recv(router[k], hello, sizeof hello, 0); }
    }
    double best[2] = {1e9, 1e9}, sum[2] = {0, 0};
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 2; k++) {
            double t0 = now();
            for (int w = 0; w < 2; w++) {
                char id[3] = {'w', (char)('0' + w), 0};
                zmq_send(router[k], id, 2, ZMQ_SNDMORE);
                for (int f = 0; f < FRAMES; f++) {
                    zmq_msg_t m;
                    zmq_msg_init_data(&m, payload + (size_t)f * FRAME_BYTES, FRAME_BYTES, NULL, NULL);
                    zmq_msg_send(&m, router[k], f + 1 < FRAMES ? ZMQ_SNDMORE : 0);
                }
            }
            for (int w = 0; w < 2; w++) {
                int more = 1;
                while (more) { zmq_msg_t m; zmq_msg_init(&m); zmq_msg_recv(&m, router[k], 0); more = zmq_msg_more(&m); zmq_msg_close(&m); }
            }
            double t = now() - t0;
            if (r > 0) { if (t < best[k]) best[k] = t; sum[k] += t; }
        }
    }
    for (int k = 0; k < 2; k++)
        printf("%s: best %.2f ms, mean %.2f ms (2 peers x %.1f MB each way)\n", k ? "variant" : "thor's setup",
               best[k] * 1e3, sum[k] / (rounds - 1) * 1e3, FRAMES * FRAME_BYTES / 1e6);
    for (int k = 0; k < 2; k++)
        for (int w = 0; w < 2; w++) { char id[3] = {'w', (char)('0' + w), 0}; zmq_send(router[k], id, 2, ZMQ_SNDMORE); zmq_send(router[k], "x", 1, 0); }
    while (wait(NULL) > 0) {}
    for (int k = 0; k < 2; k++) {
        zmq_close(router[k]);
        zmq_ctx_term(ctx[k]);
        if (strncmp(endpoint[k], "ipc://", 6) == 0) unlink(endpoint[k] + 6);
    }
    return 0;
}
