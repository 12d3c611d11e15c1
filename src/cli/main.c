#include "mergelens/cli.h"
int main(int argc, char **argv) { return ml_cli_main(argc, argv); }
