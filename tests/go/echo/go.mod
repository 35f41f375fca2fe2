module ipvsca/echo

go 1.19
