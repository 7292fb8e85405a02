// Does a ROUTER with a ZMTP heartbeat timeout drop the connection while one large message is
// still arriving? (docs/reliability.md, "Resending only what was lost": yes, and the message is
// lost with it: libzmq counts only whole messages as the traffic that answers its PING.)
//   gcc -O2 -o /tmp/hb scripts/zmq-heartbeat-probe.c -lzmq && /tmp/hb MEGABYTES IVL_MS TIMEOUT_MS
// e.g. `110 10 20` (a 110 MB message, PING every 10 ms, 20 ms timeout): DISCONNECTED, never received;
// `110 100 30000`: received.
#include <zmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  size_t mb=atoi(argv[1]); int ivl=atoi(argv[2]), to=atoi(argv[3]);
  void*ctx=zmq_ctx_new();
  void*r=zmq_socket(ctx,ZMQ_ROUTER);
  zmq_setsockopt(r,ZMQ_HEARTBEAT_IVL,&ivl,sizeof ivl); zmq_setsockopt(r,ZMQ_HEARTBEAT_TIMEOUT,&to,sizeof to);
  zmq_socket_monitor(r,"inproc://mon",ZMQ_EVENT_DISCONNECTED|ZMQ_EVENT_ACCEPTED);
  void*mon=zmq_socket(ctx,ZMQ_PAIR); zmq_connect(mon,"inproc://mon");
  zmq_bind(r,"tcp://127.0.0.1:5791");
  void*d=zmq_socket(ctx,ZMQ_DEALER);
  int rc_ivl=atoi(argc>4?argv[4]:"0"); if(rc_ivl){zmq_setsockopt(d,ZMQ_HEARTBEAT_IVL,&rc_ivl,sizeof rc_ivl);}
  zmq_connect(d,"tcp://127.0.0.1:5791");
  zmq_send(d,"hi",2,0);
  zmq_msg_t m; zmq_msg_init(&m); zmq_msg_recv(&m,r,0); zmq_msg_close(&m); zmq_msg_init(&m); zmq_msg_recv(&m,r,0); zmq_msg_close(&m);
  usleep(300000);
  size_t n=mb<<20; char*buf=malloc(n); memset(buf,1,n);
  double t0=now(); zmq_send(d,buf,n,0);
  zmq_pollitem_t it[2]={{r,0,ZMQ_POLLIN,0},{mon,0,ZMQ_POLLIN,0}};
  int got=0; while(now()-t0<20 && !got){
    zmq_poll(it,2,100);
    if(it[1].revents){zmq_msg_t e;zmq_msg_init(&e);zmq_msg_recv(&e,mon,0);unsigned short ev=*(unsigned short*)zmq_msg_data(&e);zmq_msg_close(&e);zmq_msg_init(&e);zmq_msg_recv(&e,mon,0);zmq_msg_close(&e);printf("%.3f s event %s\n",now()-t0,ev==ZMQ_EVENT_DISCONNECTED?"DISCONNECTED":"ACCEPTED");}
    if(it[0].revents){zmq_msg_t a;zmq_msg_init(&a);zmq_msg_recv(&a,r,0);zmq_msg_close(&a);zmq_msg_init(&a);zmq_msg_recv(&a,r,0);printf("%.3f s received %zu bytes\n",now()-t0,zmq_msg_size(&a));zmq_msg_close(&a);got=1;}
  }
  if(!got)printf("not received within 20 s\n");
  return 0;
}
