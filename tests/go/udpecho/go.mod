module ipvsca/udpecho

go 1.19
