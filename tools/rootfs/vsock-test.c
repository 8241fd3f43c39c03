/*
 * vsock-test: both ends of a vsock stream for the nested tier, built static into the
 * guest userland (tools/mkrootfs) and copied into L1 (tools/nested-kvm/build).
 *
 *   vsock-test listen PORT              (guest) accept one AF_VSOCK connection, echo to EOF
 *   vsock-test connect CID PORT BYTES   (guest) send BYTES of the pattern, shut down the
 *                                       write side, read everything back
 *   vsock-test uconnect PATH PORT BYTES (host) Firecracker's protocol on PATH: CONNECT PORT,
 *                                       read OK, then as `connect`
 *   vsock-test ulisten PATH             (host) accept one Unix connection at PATH, echo
 *
 * Pattern byte i = (i * 7 + i / 251) & 0xff. Each end prints one line
 *   VSOCK-TEST mode=M sent=N received=N sum=S ok=0|1
 * (sum: a 64-bit FNV-1a of what came back; ok: it equals what was sent), prefixed as the
 * caller's protocol wants by the caller.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static unsigned char pat(uint64_t i) { return (unsigned char)((i * 7 + i / 251) & 0xff); }

static uint64_t fnv(uint64_t h, const unsigned char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ULL;
	return h;
}

static int echo(int fd, const char *mode)
{
	unsigned char buf[65536];
	uint64_t got = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (uint64_t)n;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, (size_t)(n - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return 1;
			off += w;
		}
	}
	printf("VSOCK-TEST mode=%s echoed=%llu\n", mode, (unsigned long long)got);
	return 0;
}

/* Sends `bytes` of the pattern while reading the echo (poll: never blocked writing while
 * the echo waits for us to read), then shuts down the write side and reads to EOF. */
static int exchange(int fd, uint64_t bytes, const char *mode)
{
	unsigned char out[16384], in[65536];
	uint64_t sent = 0, got = 0, hs = 0xcbf29ce484222325ULL, hr = hs;
	int shut = 0;
	for (;;) {
		if (sent == bytes && !shut) {
			shutdown(fd, SHUT_WR);
			shut = 1;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN | (shut ? 0 : POLLOUT)};
		if (poll(&p, 1, 60000) <= 0)
			return 1;
		if (p.revents & POLLOUT) {
			size_t n = sizeof out;
			if (bytes - sent < n)
				n = (size_t)(bytes - sent);
			for (size_t i = 0; i < n; i++)
				out[i] = pat(sent + i);
			ssize_t w = send(fd, out, n, MSG_DONTWAIT);
			if (w < 0 && errno != EAGAIN && errno != EINTR)
				return 1;
			if (w > 0) {
				hs = fnv(hs, out, (size_t)w);
				sent += (uint64_t)w;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = recv(fd, in, sizeof in, MSG_DONTWAIT);
			if (r > 0) {
				hr = fnv(hr, in, (size_t)r);
				got += (uint64_t)r;
			} else if (r == 0) {
				break;
			} else if (errno != EAGAIN && errno != EINTR) {
				return 1;
			}
		}
	}
	printf("VSOCK-TEST mode=%s sent=%llu received=%llu sum=%016llx ok=%d\n", mode,
	       (unsigned long long)sent, (unsigned long long)got, (unsigned long long)hr,
	       got == sent && hr == hs);
	return !(got == sent && hr == hs);
}

static int unix_addr(struct sockaddr_un *a, const char *path)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof a->sun_path)
		return -1;
	strcpy(a->sun_path, path);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc == 3 && !strcmp(argv[1], "listen")) {
		struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					.svm_port = (unsigned)atoi(argv[2])};
		int l = socket(AF_VSOCK, SOCK_STREAM, 0);
		if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4)) {
			printf("VSOCK-TEST mode=listen error=%s\n", strerror(errno));
			return 1;
		}
		printf("VSOCK-TEST mode=listen ready port=%s\n", argv[2]);
		int c = accept(l, NULL, NULL);
		return c < 0 ? 1 : echo(c, "listen");
	}
	if (argc == 5 && !strcmp(argv[1], "connect")) {
		struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = (unsigned)atoi(argv[2]),
					.svm_port = (unsigned)atoi(argv[3])};
		int c = socket(AF_VSOCK, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) {
			printf("VSOCK-TEST mode=connect error=%s\n", strerror(errno));
			return 1;
		}
		return exchange(c, strtoull(argv[4], NULL, 10), "connect");
	}
	if (argc == 5 && !strcmp(argv[1], "uconnect")) {
		struct sockaddr_un a;
		int c = socket(AF_UNIX, SOCK_STREAM, 0);
		if (unix_addr(&a, argv[2]) || c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) {
			printf("VSOCK-TEST mode=uconnect error=%s\n", strerror(errno));
			return 1;
		}
		char line[64];
		int n = snprintf(line, sizeof line, "CONNECT %s\n", argv[3]);
		if (write(c, line, (size_t)n) != n)
			return 1;
		size_t k = 0;
		while (k + 1 < sizeof line && read(c, line + k, 1) == 1 && line[k] != '\n')
			k++;
		line[k] = 0;
		if (strncmp(line, "OK ", 3)) {
			printf("VSOCK-TEST mode=uconnect error=no-ok line=%s\n", line);
			return 1;
		}
		printf("VSOCK-TEST mode=uconnect host_port=%s\n", line + 3);
		return exchange(c, strtoull(argv[4], NULL, 10), "uconnect");
	}
	if (argc == 3 && !strcmp(argv[1], "ulisten")) {
		struct sockaddr_un a;
		int l = socket(AF_UNIX, SOCK_STREAM, 0);
		if (unix_addr(&a, argv[2]) || l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) ||
		    listen(l, 4)) {
			printf("VSOCK-TEST mode=ulisten error=%s\n", strerror(errno));
			return 1;
		}
		int c = accept(l, NULL, NULL);
		return c < 0 ? 1 : echo(c, "ulisten");
	}
	fprintf(stderr, "usage: vsock-test listen PORT | connect CID PORT BYTES | "
			"uconnect PATH PORT BYTES | ulisten PATH\n");
	return 2;
}
