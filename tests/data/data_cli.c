/* Test driver: the data module's commands as a standalone executable. */
#include "mergelens/data.h"
#include "ml_test_driver.h"

int main(int argc, char **argv) {
    static const ml_command cmds[] = {
        {"tokenizer", ml_cmd_tokenizer, NULL},
        {"tokenize", ml_cmd_tokenize, NULL},
        {"data", ml_cmd_data, NULL},
        {NULL, NULL, NULL},
    };
    return ml_test_driver_main(argc, argv, "data_cli", cmds);
}
