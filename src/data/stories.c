/* A seeded generator of simple children's stories: the synthetic stand-in
 * for TinyStories in the demo (Debian ships nothing like it). Each story
 * picks a hero, a friend, a place, an object, a problem and a resolution
 * from small word lists and strings template sentences together, in the
 * simple vocabulary and shape of TinyStories. It is synthetic: the text is
 * repetitive by construction and only meant to give the demo a fourth,
 * distinct, easy domain. */
#include "mergelens/data.h"

#include <stdarg.h>
#include <string.h>

#define PICK(rng, arr) (arr)[ml_rng_below((rng), sizeof(arr) / sizeof((arr)[0]))]

static const char *names[] = {"Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim", "Zoe", "Jack",
                              "Emma", "Leo", "Rosie", "Finn", "Ella", "Noah", "Molly", "Jake"};
static const char *animals[] = {"cat", "dog", "bunny", "bird", "frog", "duck", "bear", "mouse", "fox", "puppy",
                                "kitten", "lamb", "owl", "turtle", "pony"};
static const char *adjs[] = {"little", "happy", "small", "kind", "brave", "silly", "shy", "curious", "friendly",
                             "sleepy", "tiny", "big"};
static const char *places[] = {"park", "garden", "forest", "beach", "farm", "house", "school", "yard", "pond",
                               "hill", "meadow", "town"};
static const char *objects[] = {"ball", "kite", "toy car", "red hat", "doll", "book", "balloon", "cookie", "apple",
                                "flower", "shell", "blue box", "drum", "boat", "teddy bear"};
static const char *feelings[] = {"happy", "sad", "scared", "angry", "surprised", "proud", "tired", "excited"};
static const char *weathers[] = {"sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy"};
static const char *verbs[] = {"play", "run", "jump", "dance", "sing", "swim", "climb", "draw", "read", "explore"};
static const char *morals[] = {"sharing is good", "it is good to help your friends", "being kind makes everyone happy",
                               "you should always say sorry", "it is okay to ask for help",
                               "trying again is how you learn", "friends make everything better",
                               "listening to mom is smart"};

typedef struct {
    char **buf;
    size_t *len, *cap;
    int rc;
} sbuf;

__attribute__((format(printf, 2, 3))) static void say(sbuf *b, const char *fmt, ...) {
    if (b->rc != ML_OK) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = *b->cap - *b->len;
        int n = vsnprintf(*b->buf + *b->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->rc = ML_FAIL(ML_ERR_INTERNAL, "story formatting failed");
            return;
        }
        if ((size_t)n < room) {
            *b->len += (size_t)n;
            return;
        }
        size_t nc = *b->cap * 2 + (size_t)n + 256;
        char *nb = ml_realloc(*b->buf, nc);
        if (!nb) {
            b->rc = ML_ERR_NOMEM;
            return;
        }
        *b->buf = nb;
        *b->cap = nc;
    }
}

int ml_story_generate(ml_rng *r, char **buf, size_t *len, size_t *cap) {
    if (!*buf) {
        *cap = 1024;
        *len = 0;
        *buf = ml_malloc(*cap);
        if (!*buf) return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    sbuf b = {buf, len, cap, ML_OK};
    const char *hero = PICK(r, names), *friend = PICK(r, names), *animal = PICK(r, animals);
    while (friend == hero) friend = PICK(r, names);
    const char *adj = PICK(r, adjs), *place = PICK(r, places), *obj = PICK(r, objects), *verb = PICK(r, verbs);
    const char *weather = PICK(r, weathers);
    int she = ml_rng_below(r, 2) == 0;
    const char *pr = she ? "She" : "He", *po = she ? "her" : "his", *pl = she ? "she" : "he";
    switch (ml_rng_below(r, 4)) {
    case 0: say(&b, "Once upon a time, there was a %s %s named %s. ", adj, she ? "girl" : "boy", hero); break;
    case 1: say(&b, "One %s day, %s went to the %s. ", weather, hero, place); break;
    case 2: say(&b, "%s was a %s %s who lived near the %s. ", hero, adj, animal, place); break;
    default: say(&b, "There was a %s %s. %s liked to %s every day. ", adj, animal, hero, verb); break;
    }
    say(&b, "%s had a %s. %s loved the %s very much. ", pr, obj, pr, obj);
    if (ml_rng_below(r, 2))
        say(&b, "Every day, %s liked to %s in the %s with %s friend %s. ", pl, verb, place, po, friend);
    else
        say(&b, "One day, %s met a %s %s at the %s. ", pl, PICK(r, adjs), PICK(r, animals), place);
    switch (ml_rng_below(r, 5)) {
    case 0:
        say(&b, "But then, the %s was lost. %s looked everywhere, but %s could not find it. %s felt %s. ", obj, hero,
            pl, pr, PICK(r, feelings));
        say(&b, "%s came to help. \"Let's look together,\" said %s. ", friend, friend);
        say(&b, "They looked under the tree and behind the rock. At last, they found the %s! ", obj);
        break;
    case 1:
        say(&b, "%s wanted to play with the %s too. \"Can I have it?\" %s asked. ", friend, obj, friend);
        say(&b, "At first, %s said no. %s was %s. Then %s saw that %s was %s. ", hero, friend, PICK(r, feelings), hero,
            friend, PICK(r, feelings));
        say(&b, "So %s shared the %s, and they played together all day. ", hero, obj);
        break;
    case 2:
        say(&b, "Suddenly, it started to rain. The %s got wet and %s was %s. ", obj, hero, PICK(r, feelings));
        say(&b, "%s's mom said, \"Don't worry, we can dry it.\" They put it by the fire. ", hero);
        say(&b, "Soon the %s was warm and dry again. ", obj);
        break;
    case 3:
        say(&b, "The %s climbed up a tall tree and could not get down. It was %s. ", animal, PICK(r, feelings));
        say(&b, "%s and %s got a long stick. \"We can help you!\" they said. ", hero, friend);
        say(&b, "The %s jumped down and said thank you. ", animal);
        break;
    default:
        say(&b, "%s tried to %s, but %s fell down. %s felt %s. ", hero, verb, pl, pr, PICK(r, feelings));
        say(&b, "%s said, \"Try again! You can do it.\" So %s tried again, and this time %s did it! ", friend, hero, pl);
        break;
    }
    switch (ml_rng_below(r, 3)) {
    case 0: say(&b, "%s was very %s. %s learned that %s.", hero, PICK(r, feelings), pr, PICK(r, morals)); break;
    case 1: say(&b, "From that day on, %s and %s were best friends.", hero, friend); break;
    default: say(&b, "They went home and had a big hug. It was a good day."); break;
    }
    return b.rc;
}

int ml_stories_write(const char *path, int64_t n, uint64_t seed) {
    int rc = ML_OK;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return ML_FAIL(ML_ERR_IO, "%s: cannot create", tmp);
    ml_rng rng;
    ml_rng_seed(&rng, seed, 0x73746f7279 /* "story" */);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (int64_t i = 0; i < n; i++) {
        len = 0;
        ML_CHECK_GOTO(ml_story_generate(&rng, &buf, &len, &cap), done);
        if (fwrite(buf, 1, len, f) != len || fputs("\n<|endoftext|>\n", f) < 0)
            ML_FAIL_GOTO(done, ML_ERR_IO, "%s: write failed", tmp);
    }
done:
    ml_free(buf);
    if (fclose(f) != 0 && rc == ML_OK) rc = ML_FAIL(ML_ERR_IO, "%s: write failed", tmp);
    if (rc == ML_OK && rename(tmp, path) != 0) rc = ML_FAIL(ML_ERR_IO, "%s: cannot rename into place", path);
    if (rc != ML_OK) remove(tmp);
    return rc;
}
