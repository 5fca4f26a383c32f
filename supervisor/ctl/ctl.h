/* holdfastctl: the operator's command-line client. Each command lives in
 * a cmd-*.c file and has the signature of CtlCommand; main.c dispatches. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

typedef struct CtlCommand {
        const char *name;
        const char *summary;
        int (*run)(int argc, char **argv);
        void (*help)(void);
} CtlCommand;

/* Exit codes, as documented in `holdfastctl --help`. */
enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILURE = 1,  /* the operation failed */
        CTL_EXIT_USAGE = 2,    /* bad command line */
        CTL_EXIT_INVALID = 3,  /* the input is malformed or does not verify */
};

int cmd_convert(int argc, char **argv);
void help_convert(void);
int cmd_inspect(int argc, char **argv);
void help_inspect(void);
int cmd_verify(int argc, char **argv);
void help_verify(void);
int cmd_cat(int argc, char **argv);
void help_cat(void);

int cmd_status(int argc, char **argv);
void help_status(void);
int cmd_mounts(int argc, char **argv);
void help_mounts(void);
int cmd_mount(int argc, char **argv);
void help_mount(void);
int cmd_umount(int argc, char **argv);
void help_umount(void);
int cmd_upgrade(int argc, char **argv);
void help_upgrade(void);
int cmd_restart(int argc, char **argv);
void help_restart(void);
int cmd_image(int argc, char **argv);
void help_image(void);

/* "4194304", "64k", "4M", "4MiB", "1G" -> bytes. -EINVAL when malformed. */
int parse_size(const char *s, uint64_t *ret);

/* Root given with the global --root option (default DEFAULT_ROOT). */
extern const char *ctl_root;

void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
