/*
 * crawler - the tutorial's Pool crawler: multiprocessing.Pool.apply_async
 * with a callback.
 *
 * A process Pool of --procs N workers (default: the CPU count) fetches the
 * URLs given on the command line, one apply_async task per URL.  The task
 * runs in a worker: it fetches the page with libcurl (http and https only,
 * no redirects followed, 30 s at most) and hands back the response's status
 * code and size, or libcurl's error when there was no response.  The
 * callback runs in the parent (on the pool's thread, as in Python) and
 * prints one line per URL as its fetch finishes:
 *
 *   URL status=CODE bytes=N     a response came, whatever its status
 *                               (404 is still status=404), N body bytes
 *   URL error=MESSAGE           no response: refused, no such host, a
 *                               timeout, an unsupported URL... or the worker
 *                               died while fetching (the pool replaces it)
 *
 * The lines come in the order the fetches finish.  The exit status is 0
 * once every URL has been reported, whatever the outcomes.
 *
 *   crawler [--procs N] URL...
 *
 * Bad input (N outside 1..64, no URL, an empty URL or one longer than 8192
 * bytes, an unknown option): one line on stderr, exit 2.  Options and URLs
 * may come in any order; after "--" everything is a URL.
 *
 * Python original:
 *   def Foo(url): return requests.get(url)
 *   def Bar(response): print(response.url, response.status_code)
 *   pool = Pool(5)
 *   for url in urls: pool.apply_async(func=Foo, args=(url,), callback=Bar)
 *   pool.close(); pool.join()
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "conc.h"
#include "conc/pool.h"
#include "cli.h"

static const char *prog = "crawler";

#define MAX_PROCS 64
#define MAX_URL 8192
#define MAX_MESSAGE 512
#define FETCH_TIMEOUT_MS 30000L

/* ----------------------------------------------------------- the task */

/* What a fetch hands back: this header, then the error message (no NUL)
 * when there was no response. */
struct fetch_head {
    int32_t responded;          /* 1: code and bytes are valid; 0: an error */
    int32_t code;               /* the HTTP status */
    uint64_t bytes;             /* body bytes received */
};

static size_t count_bytes(char *data, size_t size, size_t n, void *ctx)
{
    (void)data;
    *(uint64_t *)ctx += (uint64_t)size * n;
    return size * n;
}

/* The task, in a worker: arg is the URL's bytes (no NUL). */
static int fetch(const void *arg, size_t len, void **result, size_t *result_len)
{
    if (len == 0 || len > MAX_URL)
        return -EINVAL;
    char url[MAX_URL + 1];
    memcpy(url, arg, len);
    url[len] = '\0';

    struct fetch_head head = { 0, 0, 0 };
    char errbuf[CURL_ERROR_SIZE] = "";
    CURLcode cc = CURLE_FAILED_INIT;
    CURL *easy = curl_easy_init();
    if (easy) {
        curl_easy_setopt(easy, CURLOPT_URL, url);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, count_bytes);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, &head.bytes);
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, FETCH_TIMEOUT_MS);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt(easy, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        /* The local machine is never reached through a proxy. */
        curl_easy_setopt(easy, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
        cc = curl_easy_perform(easy);
        long code = 0;
        if (cc == CURLE_OK && curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK) {
            head.responded = 1;
            head.code = (int32_t)code;
        }
        curl_easy_cleanup(easy);
    }
    const char *msg = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    size_t mlen = head.responded ? 0 : strnlen(msg, MAX_MESSAGE);
    unsigned char *out = malloc(sizeof head + mlen);
    if (!out)
        return -ENOMEM;
    memcpy(out, &head, sizeof head);
    memcpy(out + sizeof head, msg, mlen);
    *result = out;
    *result_len = sizeof head + mlen;
    return 0;
}

/* -------------------------------------------------------- the callbacks */

/* callback: the fetch ran; print what it found.  ctx is the URL. */
static void on_fetched(conc_pool_result *r, void *ctx)
{
    const char *url = ctx;
    void *v = NULL;
    size_t len = 0;
    int status = conc_pool_result_get(r, &v, &len, 0);
    struct fetch_head head;
    if (status != 0 || len < sizeof head || len > sizeof head + MAX_MESSAGE) {
        printf("%s error=%s\n", url, status != 0 ? conc_strerror(status) : "malformed answer");
    } else {
        memcpy(&head, v, sizeof head);
        if (head.responded)
            printf("%s status=%d bytes=%llu\n", url, (int)head.code,
                   (unsigned long long)head.bytes);
        else
            printf("%s error=%.*s\n", url, (int)(len - sizeof head),
                   (const char *)v + sizeof head);
    }
    fflush(stdout);
}

/* error_callback: the task failed (its worker died, or the pool ended). */
static void on_failed(conc_pool_result *r, void *ctx)
{
    const char *url = ctx;
    int status = conc_pool_result_get(r, NULL, NULL, 0);
    int code;
    if (status == -ECHILD && conc_pool_result_exitcode(r, &code) == 0) {
        if (code < 0)
            printf("%s error=the worker was killed by signal %d\n", url, -code);
        else
            printf("%s error=the worker exited with code %d\n", url, code);
    } else {
        printf("%s error=%s\n", url, conc_strerror(status));
    }
    fflush(stdout);
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--procs N] URL...\n"
               "  fetches each URL in a Pool of worker processes and prints\n"
               "  'URL status=CODE bytes=N' or 'URL error=MESSAGE' as each finishes\n"
               "  --procs N   worker processes, 1 to %d (default: the CPU count)\n",
            prog, MAX_PROCS);
}

int main(int argc, char **argv)
{
    /* Options and URLs may be mixed: split them, then parse the options. */
    char **optv = calloc((size_t)argc + 1, sizeof *optv);
    const char **urls = calloc((size_t)argc + 1, sizeof *urls);
    if (!optv || !urls)
        return die("arguments", -ENOMEM);
    int optc = 0, nurls = 0;
    bool ended = false;
    optv[optc++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!ended && strcmp(a, "--") == 0) {
            ended = true;
        } else if (!ended && a[0] == '-' && a[1] != '\0') {
            optv[optc++] = argv[i];
            if (strcmp(a, "--procs") == 0 && i + 1 < argc)
                optv[optc++] = argv[++i];
        } else {
            urls[nurls++] = a;
        }
    }
    long procs = 0;
    const struct opt opts[] = {
        { "procs", OPT_INT, &procs, 1, MAX_PROCS, NULL },
    };
    int rc = parse_options(optc, optv, opts, OPTS_COUNT(opts), usage);
    free(optv);
    if (rc >= 0) {
        free(urls);
        return rc;
    }
    int bad = 0;
    if (nurls == 0)
        bad = fail("%s", "no URL given (try --help)");
    for (int i = 0; i < nurls && !bad; i++) {
        if (urls[i][0] == '\0')
            bad = fail("%s", "an empty URL");
        else if (strlen(urls[i]) > MAX_URL)
            bad = fail("a URL is longer than %s bytes", "8192");
    }
    if (bad) {
        free(urls);
        return bad;
    }

    CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (cc != CURLE_OK) {
        fprintf(stderr, "%s: curl_global_init: %s\n", prog, curl_easy_strerror(cc));
        free(urls);
        return 1;
    }
    /* The workers are forked: they inherit libcurl's global state. */
    conc_pool_opts po = CONC_POOL_OPTS_INIT;
    po.processes = (int)procs;
    po.method = CONC_START_FORK;
    conc_pool *pool;
    if ((rc = conc_pool_new(&pool, &po)) < 0) {
        curl_global_cleanup();
        free(urls);
        return die("Pool", rc);
    }
    conc_pool_result **results = calloc((size_t)nurls, sizeof *results);
    int status = results ? 0 : die("results", -ENOMEM);
    int submitted = 0;
    for (; status == 0 && submitted < nurls; submitted++) {
        conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
        to.callback = on_fetched;
        to.error_callback = on_failed;
        to.ctx = (void *)urls[submitted];
        rc = conc_pool_apply_async(pool, fetch, urls[submitted], strlen(urls[submitted]), &to,
                                   &results[submitted]);
        if (rc < 0) {
            status = die(urls[submitted], rc);
            break;
        }
    }
    /* Each result is done once its callback has run: then every URL has
     * been reported. */
    for (int i = 0; i < submitted; i++) {
        if ((rc = conc_pool_result_wait(results[i], CONC_FOREVER)) < 0 && status == 0)
            status = die("wait", rc);
        conc_pool_result_free(results[i]);
    }
    free(results);
    conc_pool_close(pool);
    if ((rc = conc_pool_join(pool, CONC_FOREVER)) < 0 && status == 0)
        status = die("join", rc);
    conc_pool_free(pool);
    curl_global_cleanup();
    free(urls);
    return status;
}
