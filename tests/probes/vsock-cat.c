/*
 * vsock-cat CID PORT: what a hostile container process would try. Opens an
 * AF_VSOCK stream socket, connects to CID:PORT, copies stdin to it (then
 * half-closes) and what comes back to stdout, for at most 20 s. Every
 * failure is one line on stderr naming the call and errno, and a distinct
 * exit status: 2 socket, 3 connect, 4 I/O. Built static by build.sh so it
 * runs in a busybox test rootfs, in the guest or on the host.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *what, int code)
{
	fprintf(stderr, "vsock-cat: %s: %s (errno %d)\n", what, strerror(errno), errno);
	return code;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: vsock-cat CID PORT\n");
		return 1;
	}
	alarm(20);
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0)
		return fail("socket", 2);
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = (unsigned)strtoul(argv[1], NULL, 0),
		.svm_port = (unsigned)strtoul(argv[2], NULL, 0),
	};
	if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("connect", 3);
	fprintf(stderr, "vsock-cat: connected to %s:%s\n", argv[1], argv[2]);
	char buf[4096];
	ssize_t n;
	while ((n = read(0, buf, sizeof(buf))) > 0)
		if (write(s, buf, (size_t)n) != n)
			return fail("write", 4);
	shutdown(s, SHUT_WR);
	while ((n = read(s, buf, sizeof(buf))) > 0)
		if (write(1, buf, (size_t)n) != n)
			return fail("stdout", 4);
	if (n < 0)
		return fail("read", 4);
	return 0;
}
