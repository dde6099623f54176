/* The test node's check workload (image dualwrite.test/node-check), built by hack/test-env
 * with `gcc -static`: it proves that a pod's IP answers from the host and that its volume is
 * writable by a non-root user.
 *   - if DATA_DIR is set, writes "$DATA_DIR/written-by-<uid>" first (exit 3 if it cannot);
 *   - serves HTTP on 0.0.0.0:$PORT (default 8080): every request gets "200 ok";
 *   - exits 0 on SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

int main(void) {
  struct sigaction sa = {0};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  const char *data = getenv("DATA_DIR");
  if (data && *data) {
    char path[4096];
    snprintf(path, sizeof path, "%s/written-by-%u", data, (unsigned)getuid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "ok\n", 3) != 3 || close(fd) != 0) {
      perror(path);
      return 3;
    }
  }

  const char *port_env = getenv("PORT");
  int port = port_env ? atoi(port_env) : 8080;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)port);
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s, 16) != 0) {
    perror("listen");
    return 1;
  }
  fprintf(stderr, "http-check: listening on :%d\n", port);
  static const char reply[] =
      "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    char buf[2048];
    (void)read(c, buf, sizeof buf); /* the request line is enough; the answer is always the same */
    (void)write(c, reply, sizeof reply - 1);
    close(c);
  }
}
